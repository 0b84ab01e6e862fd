//! Sign-in through the company's identity provider: who the provider says signed in becomes a
//! milkglass user (created on the first sign-in, found by the provider's subject ever after, never
//! by name), with the global role that a claim of theirs maps to, and a session token that expires.
//! The protocol (OpenID Connect) is the HTTP adapter's; this is what it decides.

use crate::{Attempt, ErrorKind, IssuedToken, Role, ServiceError, ServiceResult, Services, User};
use milkglass_store::TokenSpec;

/// How a claim's values (a user's groups) map to global roles.
#[derive(Debug, Clone)]
pub struct RoleMapping {
    /// The claim that carries the values (`groups`, `roles`).
    pub claim: String,
    /// Claim value and the role it gives. A user with several gets the strongest.
    pub rules: Vec<(String, Role)>,
    /// The role of a user none of whose values is mapped; `None`: such users may not sign in.
    pub default: Option<Role>,
}

impl RoleMapping {
    /// The role `values` give: the strongest mapped one, else the default.
    pub fn role_for(&self, values: &[String]) -> Option<Role> {
        let strength = |role: &Role| match role {
            Role::Admin => 3,
            Role::Owner => 2,
            Role::Scientist => 1,
            Role::Viewer => 0,
        };
        self.rules
            .iter()
            .filter(|(value, _)| values.contains(value))
            .map(|(_, role)| *role)
            .max_by_key(strength)
            .or(self.default)
    }
}

/// Who the identity provider says signed in: already verified by the adapter (the ID token's
/// signature, issuer, audience, expiry and nonce).
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    pub issuer: String,
    pub subject: String,
    /// What to call a new user (a preferred user name, an email): made into a free name.
    pub name_hint: String,
    /// The values of the mapping's claim.
    pub claim_values: Vec<String>,
}

impl Services {
    /// Signs in `identity` with the role `mapping` gives and a session token lasting `session`.
    /// Refused (and audited, and counted against the address) when no role maps and there is no
    /// default, or an admin revoked the user. Blocking.
    pub fn sign_in_external(
        &self,
        identity: &VerifiedIdentity,
        mapping: &RoleMapping,
        session: std::time::Duration,
        attempt: &Attempt,
    ) -> ServiceResult<(User, IssuedToken)> {
        self.not_refused(attempt, std::time::Instant::now())?;
        let Some(role) = mapping.role_for(&identity.claim_values) else {
            let problem = format!(
                "single sign-on of {:?} (subject {:?}): no role is mapped to its {:?} claim {:?}",
                identity.name_hint, identity.subject, mapping.claim, identity.claim_values
            );
            self.failed_sign_in(attempt, &problem)?;
            return Err(ServiceError::forbidden(format!(
                "your account has no milkglass role: none of your {:?} values is mapped to one; ask an admin",
                mapping.claim
            )));
        };
        let spec = TokenSpec {
            valid_for: Some(chrono::Duration::from_std(session).map_err(ServiceError::internal)?),
            label: Some("web sign-in".into()),
        };
        match self.store.sign_in_external(&identity.issuer, &identity.subject, &identity.name_hint, role, &spec) {
            Ok((user, token, _created)) => Ok((user, token)),
            Err(milkglass_store::StoreError::Conflict(message)) => {
                self.failed_sign_in(attempt, &format!("single sign-on of a revoked user: {message}"))?;
                Err(ServiceError::new(ErrorKind::Forbidden, "revoked", message))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_mapped_role_wins_and_unmapped_users_get_the_default() {
        let mut mapping = RoleMapping {
            claim: "groups".into(),
            rules: vec![("ml".into(), Role::Scientist), ("data-owners".into(), Role::Owner)],
            default: None,
        };
        let values = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(mapping.role_for(&values(&["ml", "data-owners"])), Some(Role::Owner));
        assert_eq!(mapping.role_for(&values(&["ml"])), Some(Role::Scientist));
        assert_eq!(mapping.role_for(&values(&["sales"])), None);
        mapping.default = Some(Role::Viewer);
        assert_eq!(mapping.role_for(&[]), Some(Role::Viewer));
    }
}
