//! Single sign-on for the web app: OpenID Connect's authorization code flow with PKCE, through the
//! `openidconnect` crate, which verifies the ID token (signature against the provider's published
//! keys, issuer, audience, expiry, nonce).
//!
//! `GET /auth/oidc/login` sends the browser to the provider with a fresh state, nonce and PKCE
//! challenge; the state is also set as a cookie on this browser, so that a callback started in
//! another browser (a forged sign-in link) is refused. `GET /auth/oidc/callback` exchanges the code,
//! maps the role claim through [`RoleMapping`] and hands the browser a session token in the URL
//! fragment (which browsers never send to a server), for the web app to keep in the tab. A refusal
//! sends the browser back to the sign-in page with the reason; each is audited and counted against the
//! address like a wrong token.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::header::{COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use milkglass_service::ServiceError;
use milkglass_service::sso::{RoleMapping, VerifiedIdentity};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The client as discovery leaves it: the authorization endpoint set, the token and user info
/// endpoints as the provider's metadata lists them.
type DiscoveredClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// How long a browser has between leaving for the provider and coming back.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins under way at once; past it the oldest are forgotten (each is a few hundred bytes).
const MAX_PENDING: usize = 10_000;
const STATE_COOKIE: &str = "mg_sso_state";

/// Single sign-on as the operator configures it.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The provider's issuer URL (its discovery document is `ISSUER/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// This server as browsers reach it (`https://milkglass.example.com`); the provider sends
    /// users back to `PUBLIC_URL/auth/oidc/callback`, which must be registered with it.
    pub public_url: String,
    /// Which claim gives which global role.
    pub mapping: RoleMapping,
    /// How long a web session lasts.
    pub session: Duration,
}

/// The provider, discovered, and the sign-ins under way.
pub struct Oidc {
    settings: OidcSettings,
    client: DiscoveredClient,
    http: openidconnect::reqwest::Client,
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    next: String,
    started: Instant,
}

/// Claims beyond the standard ones, as the provider sends them (the role claim is one).
#[derive(Debug, Deserialize, Serialize)]
struct OtherClaims {
    #[serde(flatten)]
    claims: HashMap<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

impl Oidc {
    /// Reads the provider's discovery document; the error names the flag to fix.
    pub async fn discover(settings: OidcSettings) -> Result<Oidc, String> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects would let a provider's answer send milkglass anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("single sign-on: cannot make an HTTP client: {e}"))?;
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| format!("--oidc-issuer {:?} is not a URL: {e}", settings.issuer))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http).await.map_err(|e| {
            format!("--oidc-issuer {}: cannot read its discovery document: {}", settings.issuer, chain(&e))
        })?;
        let redirect = RedirectUrl::new(callback_url(&settings.public_url))
            .map_err(|e| format!("--public-url {:?} is not a URL: {e}", settings.public_url))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        Ok(Oidc { settings, client, http, pending: Mutex::new(HashMap::new()) })
    }

    fn start(&self, next: String) -> (String, String) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge);
        for scope in ["email", "profile"] {
            request = request.add_scope(Scope::new(scope.into()));
        }
        let (url, state, nonce) = request.url();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| k.clone())
        {
            pending.remove(&oldest);
        }
        let state = state.secret().clone();
        pending.insert(state.clone(), Pending { verifier, nonce, next, started: Instant::now() });
        (url.to_string(), state)
    }

    /// The code exchanged and the ID token verified: who signed in.
    async fn finish(&self, pending: Pending, code: String) -> Result<VerifiedIdentity, String> {
        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| format!("the provider lists no token endpoint: {e}"))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| format!("the provider did not exchange the code: {}", chain(&e)))?;
        let id_token = tokens.id_token().ok_or("the provider sent no ID token")?;
        let claims = id_token
            .claims(&self.client.id_token_verifier(), &pending.nonce)
            .map_err(|e| format!("the ID token does not verify: {e}"))?;
        let subject = claims.subject().as_str().to_string();
        let name_hint = claims
            .preferred_username()
            .map(|u| u.as_str().to_string())
            .or_else(|| claims.email().map(|e| e.as_str().to_string()))
            .unwrap_or_else(|| subject.clone());
        let claim = &self.settings.mapping.claim;
        // The role claim from the ID token just verified (the same token text, so the same trust),
        // else from the user info endpoint, which answers for the access token of this exchange.
        let mut values = serde_json::to_value(id_token)
            .ok()
            .and_then(|jwt| jwt.as_str().and_then(|jwt| jwt_claim(jwt, claim)))
            .map(claim_values);
        if values.is_none()
            && let Ok(request) = self.client.user_info(tokens.access_token().to_owned(), Some(claims.subject().clone()))
        {
            let info: Result<UserInfoClaims<OtherClaims, CoreGenderClaim>, _> = request.request_async(&self.http).await;
            values = info.ok().and_then(|info| info.additional_claims().claims.get(claim).cloned()).map(claim_values);
        }
        Ok(VerifiedIdentity {
            issuer: claims.issuer().as_str().to_string(),
            subject,
            name_hint,
            claim_values: values.unwrap_or_default(),
        })
    }
}

fn callback_url(public_url: &str) -> String {
    format!("{}/auth/oidc/callback", public_url.trim_end_matches('/'))
}

/// An error with its causes, for the log and the refusal (the provider's answer is often two
/// levels down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// One claim of a JWT's payload. Only for a token the library has verified.
fn jwt_claim(jwt: &str, claim: &str) -> Option<Value> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let mut claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.remove(claim)
}

/// A claim as a list of values: a string is one, a list of strings is each.
fn claim_values(value: Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s],
        Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// A path inside this server to return to (`/tables`), never another site (`//evil`, `https:`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.contains('#') => n.to_string(),
        _ => "/".into(),
    }
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/auth", get(auth_methods))
        .route("/auth/oidc/login", get(login))
        .route("/auth/oidc/callback", get(callback))
}

/// How one signs in here (no token needed): always with a token, and with single sign-on when
/// configured.
async fn auth_methods(State(state): State<AppState>) -> Json<Value> {
    let sso = state.oidc.as_ref().map(|_| json!({ "login_url": "/auth/oidc/login" }));
    Json(json!({ "token": true, "sso": sso }))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or_else(not_configured)?;
    let (url, state_value) = oidc.start(safe_next(q.next.as_deref()));
    let secure = if oidc.settings.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{STATE_COOKIE}={state_value}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        PENDING_TTL.as_secs()
    );
    Ok(redirect(&url, Some(cookie)))
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(state): State<AppState>,
    Query(q): Query<CallbackQuery>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let oidc = state.oidc.clone().ok_or_else(not_configured)?;
    let attempt = crate::auth::http_attempt(&parts);
    let cookie_state = parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{STATE_COOKIE}=")).map(str::to_string));
    let outcome = async {
        if let Some(error) = q.error {
            return Err(format!("the identity provider refused: {}", q.error_description.unwrap_or(error)));
        }
        let (Some(code), Some(given)) = (q.code, q.state) else {
            return Err("the provider's answer has no code or state".to_string());
        };
        // The state must be this browser's: a callback link made for another browser is refused.
        if cookie_state.as_deref() != Some(given.as_str()) {
            return Err("this sign-in was not started in this browser; start again".to_string());
        }
        let pending = oidc.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&given);
        let pending = pending
            .filter(|p| p.started.elapsed() < PENDING_TTL)
            .ok_or_else(|| "this sign-in expired or was used already; start again".to_string())?;
        let next = pending.next.clone();
        Ok((oidc.finish(pending, code).await?, next))
    }
    .await;
    let services = state.services.clone();
    let settings = oidc.settings.clone();
    let signed_in = match outcome {
        Ok((identity, next)) => crate::blocking(move || {
            services.sign_in_external(&identity, &settings.mapping, settings.session, &attempt).map(|s| (s, next))
        })
        .await
        .map_err(|e| e.message),
        Err(problem) => {
            let message = format!("single sign-on failed: {problem}");
            let counted = message.clone();
            let refused: Result<(), ServiceError> =
                crate::blocking(move || services.failed_sign_in(&attempt, &counted)).await;
            Err(refused.err().map(|e| e.message).unwrap_or(message))
        }
    };
    let clear = format!("{STATE_COOKIE}=; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=0");
    Ok(match signed_in {
        Ok(((_, token), next)) => redirect(&format!("{next}#session={}", token.token), Some(clear)),
        Err(message) => {
            let query: String =
                url::form_urlencoded::Serializer::new(String::new()).append_pair("sso_error", &message).finish();
            redirect(&format!("/signin?{query}"), Some(clear))
        }
    })
}

fn not_configured() -> ApiError {
    ApiError::not_found("single sign-on is not configured on this server (see `milkglass serve --oidc-issuer`)")
}

fn redirect(location: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    // The answer carries a session token in its Location: no cache may keep it.
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_server_are_returned_to() {
        assert_eq!(safe_next(Some("/tables?x=1")), "/tables?x=1");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "tables", "/a#session=x"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn a_claim_is_read_as_its_values() {
        assert_eq!(claim_values(json!("admins")), ["admins"]);
        assert_eq!(claim_values(json!(["a", 1, "b"])), ["a", "b"]);
        assert!(claim_values(json!({"a": 1})).is_empty());
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"groups":["x"]}"#);
        assert_eq!(jwt_claim(&format!("h.{payload}.s"), "groups"), Some(json!(["x"])));
    }
}
