//! A DNS resolver that checks its own answers, so the address that passes the rules is the
//! address the connection is made to (no second lookup for a rebinding server to answer).

use crate::rules::Rules;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) struct CheckedResolver {
    rules: Arc<Rules>,
}

impl CheckedResolver {
    pub(crate) fn new(rules: Arc<Rules>) -> CheckedResolver {
        CheckedResolver { rules }
    }
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let answer: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if rules.allow.allows_host(&host) {
                return Ok(Box::new(answer.into_iter()) as Addrs);
            }
            // Only permitted addresses are handed to the connector; when none is left, the first
            // refusal says why.
            let mut first_refusal = None;
            let permitted: Vec<SocketAddr> = answer
                .into_iter()
                .filter(|addr| match rules.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        first_refusal.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            match first_refusal {
                Some(refusal) if permitted.is_empty() => {
                    Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(permitted.into_iter()) as Addrs),
            }
        })
    }
}
