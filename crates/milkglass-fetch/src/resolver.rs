//! A DNS resolver that checks its own answers, so the address that passes the rules is the
//! address the connection is made to (no second lookup for a rebinding server to answer).

use crate::rules::Rules;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

/// How long an answer (or a failure to get one) is reused. Checks of a dataset's URLs ask for
/// the same few hosts thousands of times; without reuse each would be a lookup of its own.
const ANSWER_LIFETIME: Duration = Duration::from_secs(30);
/// Lookups running at once. Each takes one of the runtime's blocking threads (the system
/// resolver blocks) for as long as the name server takes, seconds when it does not answer;
/// unbounded, a URL check could fill the pool that every store call of the server waits on.
const CONCURRENT_LOOKUPS: usize = 8;
/// Hosts remembered; past this the memory is cleared (names come from users' data).
const MAX_REMEMBERED_HOSTS: usize = 10_000;

type Answer = Result<Vec<SocketAddr>, String>;

/// One host's lookup, shared by everyone who asks for the host while it runs and after.
struct HostLookup {
    answer: OnceCell<Answer>,
    started: Instant,
}

pub(crate) struct CheckedResolver {
    rules: Arc<Rules>,
    hosts: Arc<Mutex<HashMap<String, Arc<HostLookup>>>>,
    lookups: Arc<Semaphore>,
}

impl CheckedResolver {
    pub(crate) fn new(rules: Arc<Rules>) -> CheckedResolver {
        CheckedResolver { rules, hosts: Arc::default(), lookups: Arc::new(Semaphore::new(CONCURRENT_LOOKUPS)) }
    }
}

/// The host's addresses: a recent answer if there is one, else one lookup however many ask.
async fn lookup(hosts: &Mutex<HashMap<String, Arc<HostLookup>>>, lookups: &Arc<Semaphore>, host: &str) -> Answer {
    let entry = {
        let mut hosts = hosts.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = hosts.get(host).filter(|entry| entry.started.elapsed() < ANSWER_LIFETIME).cloned();
        fresh.unwrap_or_else(|| {
            if hosts.len() >= MAX_REMEMBERED_HOSTS {
                hosts.clear();
            }
            let entry = Arc::new(HostLookup { answer: OnceCell::new(), started: Instant::now() });
            hosts.insert(host.to_string(), entry.clone());
            entry
        })
    };
    let answer = entry.answer.get_or_init(|| {
        // A task of its own holds the lookup's permit until the system resolver returns, even
        // when the request that asked gives up first (its timeout): the bound stays true.
        let (lookups, host) = (lookups.clone(), host.to_string());
        let lookup = tokio::spawn(async move {
            let _permit = lookups.acquire_owned().await.map_err(|e| e.to_string())?;
            match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(addrs) => Ok(addrs.collect()),
                Err(e) => Err(e.to_string()),
            }
        });
        async move { lookup.await.unwrap_or_else(|e| Err(e.to_string())) }
    });
    answer.await.clone()
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (rules, hosts, lookups) = (self.rules.clone(), self.hosts.clone(), self.lookups.clone());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let answer: Vec<SocketAddr> = lookup(&hosts, &lookups, &host).await.map_err(|e| {
                Box::new(std::io::Error::other(format!("cannot resolve {host}: {e}")))
                    as Box<dyn std::error::Error + Send + Sync>
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_askers_share_one_lookup_and_its_answer() {
        let hosts: Mutex<HashMap<String, Arc<HostLookup>>> = Mutex::default();
        let lookups = Arc::new(Semaphore::new(CONCURRENT_LOOKUPS));
        let answers = futures::future::join_all((0..50).map(|_| lookup(&hosts, &lookups, "localhost"))).await;
        let first = answers[0].clone().expect("localhost resolves");
        assert!(first.iter().any(|a| a.ip().is_loopback()), "{first:?}");
        assert!(answers.iter().all(|a| a.as_ref() == Ok(&first)));
        let hosts = hosts.lock().unwrap();
        assert_eq!(hosts.len(), 1);
        assert!(hosts["localhost"].answer.initialized());
        // Every permit is back: no lookup is left holding one.
        assert_eq!(lookups.available_permits(), CONCURRENT_LOOKUPS);
    }
}
