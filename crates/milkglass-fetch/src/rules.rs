//! SSRF rules: which schemes and addresses the fetcher may reach.
//!
//! Every address the fetcher connects to passes [`Rules::check_ip`]: literal addresses in a URL
//! before any request, resolved names inside the DNS resolver (so the address that is checked is
//! the address that is dialled, and a rebinding answer cannot slip in between).

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address ranges refused unless allow-listed, each with the name a refusal gives it.
const BLOCKED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (private)"),
    ("ff00::/8", "multicast"),
];

/// Why a URL was not fetched. `Display` names the rule, so errors read as sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Only `http` and `https` are fetched: `file`, `ftp`, `gopher` and the rest would reach
    /// the server's own disk or services that were never meant to be spoken to over a URL.
    Scheme(String),
    /// The address is in a refused range (and not allow-listed).
    Address { addr: IpAddr, range: IpNet, name: &'static str },
    /// The URL has no host to connect to.
    NoHost,
    /// A name that only a private network resolves (`nas`, `printer.local`, `localhost`),
    /// judged without resolving it (and not allow-listed).
    PrivateName(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Scheme(scheme) => write!(f, "scheme {scheme:?} is not fetched (only http and https)"),
            Refusal::Address { addr, range, name } => {
                write!(f, "address {addr} is {name} ({range}); an admin can allow it with the fetch allow-list")
            }
            Refusal::NoHost => write!(f, "the URL has no host"),
            Refusal::PrivateName(host) => {
                write!(f, "{host} is a name inside a private network; an admin can allow it with the fetch allow-list")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// The admin's allow-list: address ranges and host names that the rules let through even though
/// they are private (an internal image server, a test server on loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
    /// Lower-case host names; an entry starting with `*.` allows every subdomain.
    hosts: Vec<String>,
}

impl AllowList {
    /// Parses entries such as `10.1.0.0/16`, `127.0.0.1`, `images.internal` or `*.corp.example`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                list.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if is_host_pattern(entry) {
                list.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!("{entry:?} is neither an address, a CIDR range nor a host name"));
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.hosts.is_empty()
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether every address of `host` may be reached, whatever it resolves to.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => *pattern == host,
        })
    }
}

fn is_host_pattern(entry: &str) -> bool {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The rules one fetcher applies.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub allow: AllowList,
}

impl Rules {
    pub fn check_scheme(&self, scheme: &str) -> Result<(), Refusal> {
        match scheme {
            "http" | "https" => Ok(()),
            other => Err(Refusal::Scheme(other.to_string())),
        }
    }

    /// What a URL must pass before any request: its scheme and, when its host is a literal address,
    /// that address (a name is checked on the resolver's answer, the address actually dialled).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        self.check_scheme(url.scheme())?;
        match url.host() {
            None => Err(Refusal::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => self.check_ip(ip.into()),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    /// What can be said about a URL without a network: [`Rules::check_url`], and for a host
    /// name, whether it is one only a private network resolves. Used where nothing is fetched
    /// yet (URL reports, saved settings); a fetch judges the address the name resolves to.
    pub fn check_url_offline(&self, url: &url::Url) -> Result<(), Refusal> {
        self.check_url(url)?;
        if let Some(url::Host::Domain(host)) = url.host() {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            let private = !host.contains('.')
                || host.ends_with(".local")
                || host.ends_with(".internal")
                || host.ends_with(".localhost");
            if private && !self.allow.allows_host(&host) {
                return Err(Refusal::PrivateName(host));
            }
        }
        Ok(())
    }

    /// Refuses an address in a blocked range unless allow-listed. IPv6 forms that carry an IPv4
    /// address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
    /// `2002::/16`) are judged by that IPv4 address too, so `[::ffff:127.0.0.1]` is loopback.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow.allows_ip(ip) {
            return Ok(());
        }
        if let Some(blocked) = blocked_range(ip) {
            return Err(blocked);
        }
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = embedded_ipv4(v6)
            && !self.allow.allows_ip(IpAddr::V4(v4))
            && let Some(Refusal::Address { range, name, .. }) = blocked_range(IpAddr::V4(v4))
        {
            return Err(Refusal::Address { addr: ip, range, name });
        }
        Ok(())
    }
}

fn blocked_range(ip: IpAddr) -> Option<Refusal> {
    BLOCKED.iter().find_map(|(cidr, name)| {
        let range: IpNet = cidr.parse().expect("valid built-in range");
        range.contains(&ip).then_some(Refusal::Address { addr: ip, range, name })
    })
}

fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(rules: &Rules, ip: &str) -> bool {
        rules.check_ip(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn offline_checks_judge_names_too() {
        let rules = Rules::default();
        let offline = |url: &str| rules.check_url_offline(&url::Url::parse(url).unwrap());
        for refused in
            ["http://localhost/", "http://nas/a", "http://printer.local/", "http://db.internal/", "http://127.1/"]
        {
            assert!(offline(refused).is_err(), "{refused}");
        }
        assert!(offline("https://images.example.com/a.png").is_ok());
        let allowed = Rules { allow: AllowList::parse(&["nas".to_string()]).unwrap() };
        assert!(allowed.check_url_offline(&url::Url::parse("http://nas/a").unwrap()).is_ok());
    }

    #[test]
    fn refuses_every_private_range_by_default() {
        let rules = Rules::default();
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "224.0.0.1",
        ] {
            assert!(refused(&rules, ip), "{ip} should be refused");
        }
        for ip in ["93.184.215.14", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:93.184.215.14"] {
            assert!(!refused(&rules, ip), "{ip} should pass");
        }
    }

    #[test]
    fn refusal_names_the_rule() {
        let err = Rules::default().check_ip("169.254.169.254".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 169.254.169.254 is link-local (cloud metadata) (169.254.0.0/16); an admin can allow it with the fetch allow-list"
        );
        let mapped = Rules::default().check_ip("::ffff:127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(mapped.to_string().contains("loopback (127.0.0.0/8)"), "{mapped}");
    }

    #[test]
    fn allow_list_lets_ranges_and_hosts_through() {
        let rules =
            Rules { allow: AllowList::parse(&["10.1.0.0/16", "127.0.0.1", "*.corp.example", "img.local"]).unwrap() };
        assert!(!refused(&rules, "10.1.2.3"));
        assert!(refused(&rules, "10.2.0.1"));
        assert!(!refused(&rules, "127.0.0.1"));
        assert!(!refused(&rules, "::ffff:127.0.0.1"), "a mapped form of an allowed address is allowed");
        assert!(refused(&rules, "127.0.0.2"));
        assert!(rules.allow.allows_host("a.corp.example"));
        assert!(rules.allow.allows_host("IMG.local."));
        assert!(!rules.allow.allows_host("corp.example"));
        assert!(!rules.allow.allows_host("evilcorp.example"));
        assert!(AllowList::parse(&["not a host"]).is_err());
    }

    #[test]
    fn only_http_and_https() {
        let rules = Rules::default();
        assert!(rules.check_scheme("https").is_ok());
        for scheme in ["file", "ftp", "gopher", "s3", "data"] {
            assert_eq!(rules.check_scheme(scheme), Err(Refusal::Scheme(scheme.into())));
        }
    }
}
