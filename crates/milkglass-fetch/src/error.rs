use crate::rules::Refusal;
use std::time::Duration;

/// Why an asset was not fetched. Each variant names the URL (with its query string hidden: signed
/// URLs carry their signature there) and the rule or limit that stopped it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not a usable URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{url}: refused: {rule}")]
    Refused { url: String, rule: Refusal },
    #[error("{url}: {reason}")]
    Unsupported { url: String, reason: String },
    #[error("{url}: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects { url: String, limit: u32 },
    #[error("{url}: no complete answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: the server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    #[error("signing endpoint {endpoint}: {reason}")]
    Signing { endpoint: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

pub type FetchResult<T> = Result<T, FetchError>;

impl FetchError {
    /// Worth another attempt: the server or the network may do better in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            FetchError::Timeout { .. } | FetchError::Connect { .. } => true,
            _ => false,
        }
    }

    /// Maps a client error, recognising a refusal made inside the DNS resolver.
    pub(crate) fn from_reqwest(url: &str, error: reqwest::Error) -> FetchError {
        if let Some(rule) = find_refusal(&error) {
            return FetchError::Refused { url: redact(url), rule };
        }
        if error.is_timeout() {
            return FetchError::Timeout { url: redact(url), after: Duration::ZERO };
        }
        FetchError::Connect { url: redact(url), reason: error_chain(&error) }
    }
}

/// A refusal anywhere in an error's chain: the rules speak from inside the DNS resolver and the S3
/// client, and a refusal should read as the rule it is, not as a failed connection.
pub(crate) fn find_refusal(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(rule) = e.downcast_ref::<Refusal>() {
            return Some(rule.clone());
        }
        source = e.source();
    }
    None
}

/// An error and its sources, as one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The URL without its query string and user info, which may hold signatures or passwords.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let had_query = parsed.query().is_some();
            parsed.set_query(None);
            parsed.set_fragment(None);
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            let mut text = parsed.to_string();
            if had_query {
                text.push_str("?…");
            }
            text
        }
        Err(_) => {
            let cut = url.find(['?', '#']).unwrap_or(url.len());
            let mut text: String = url[..cut].chars().take(200).collect();
            if cut < url.len() {
                text.push_str("?…");
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_signatures_and_passwords() {
        assert_eq!(super::redact("https://u:p@host/a.png?X-Amz-Signature=abc"), "https://host/a.png?…");
        assert_eq!(super::redact("http://host/a.png"), "http://host/a.png");
        assert_eq!(super::redact("not a url?secret"), "not a url?…");
    }
}
