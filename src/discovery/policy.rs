//! Which addresses a *discovered* URL may reach.
//!
//! Registration documents and index rows are written by strangers. Without a check, a document
//! could point the coordinator at the cloud metadata service (169.254.169.254), the cluster's own
//! services or the pod's loopback, and the coordinator would send it requests (and payments).
//! Every discovered endpoint and document URI therefore goes through an [`AddressPolicy`]: public
//! addresses pass; loopback, private, link-local, unique-local, carrier-grade NAT and other
//! special-purpose ranges, and cluster-internal names, are refused unless the operator listed them.
//!
//! The check happens inside DNS resolution ([`PinnedResolver`]), so the address that was checked
//! is the address the connection goes to: a name cannot resolve to a public address for the check
//! and to a private one for the connection.
//!
//! URLs the user names directly (`probe`, `submit`, static workers, the scan API, the eRPC URL,
//! the IPFS gateway) are the user's choice and do not go through this policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use url::{Host, Url};

/// Why an address is not public.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// 0.0.0.0/8, `::` (reaches the local host on most systems).
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16 (includes the 169.254.169.254 metadata service), fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10.
    CarrierGradeNat,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10, deprecated site-local.
    SiteLocal,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// 198.18/15.
    Benchmarking,
    /// 192.0.0/24, 240/4, and IPv6 forms that tunnel to an address that is not public.
    Reserved,
}

impl AddressClass {
    /// A short human name, used in refusals.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::CarrierGradeNat => "carrier-grade NAT",
            Self::UniqueLocal => "unique-local",
            Self::SiteLocal => "site-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
        }
    }
}

/// Classifies an address without any network access.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 168, _) => AddressClass::Private,
        (169, 254, _) => AddressClass::LinkLocal,
        (100, 64..=127, _) => AddressClass::CarrierGradeNat,
        (192, 0, 0) => AddressClass::Reserved,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        _ if ip == Ipv4Addr::BROADCAST => AddressClass::Broadcast,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    // IPv4-mapped (::ffff:a.b.c.d) connects to the IPv4 address itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    // Forms that carry an IPv4 address (IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::/96, 6to4
    // 2002::/16) reach that address through a translator: they are only as public as it is.
    let tail = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    let embedded = if seg[..6] == [0; 6] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(tail(seg[6], seg[7]))
    } else if seg[0] == 0x2002 {
        Some(tail(seg[1], seg[2]))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return match classify_v4(v4) {
            AddressClass::Public => AddressClass::Public,
            _ => AddressClass::Reserved,
        };
    }
    match seg[0] {
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfec0..=0xfeff => AddressClass::SiteLocal,
        0xfc00..=0xfdff => AddressClass::UniqueLocal,
        0xff00..=0xffff => AddressClass::Multicast,
        0x2001 if seg[1] == 0x0db8 => AddressClass::Documentation,
        // Teredo (2001::/32) hides its IPv4 server and client: refuse it.
        0x2001 if seg[1] == 0 => AddressClass::Reserved,
        // Discard-only (100::/64).
        0x0100 if seg[1..4] == [0, 0, 0] => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// Names that only mean something inside a cluster or on this host.
fn is_internal_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    // A single label ("remote-signer", "erpc") is completed by the pod's DNS search path to a
    // cluster service, so it is as internal as its `.svc.cluster.local` spelling.
    !host.contains('.')
        || host == "localhost"
        || host.ends_with(".localhost")
        || host.ends_with(".svc")
        || host.ends_with(".cluster.local")
        || host.ends_with(".internal")
}

/// One allowlist entry: a CIDR (a bare address is a /32 or /128) or a host pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum AllowEntry {
    Net(IpNet),
    /// Exact host name, lower case, no trailing dot.
    Host(String),
    /// `*.example.svc`: any name strictly under `.example.svc` (stored with its leading dot).
    Suffix(String),
}

/// A malformed allowlist entry.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --allow-private / discovery.allowPrivate entry {entry:?}: {why}; use a CIDR such as 10.42.0.0/16, an address such as 127.0.0.1, or a host pattern such as *.autoresearch.svc.cluster.local"
)]
pub struct AllowEntryError {
    /// The entry as given.
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl std::str::FromStr for AllowEntry {
    type Err = AllowEntryError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let s = raw.trim();
        let err = |why| AllowEntryError {
            entry: raw.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self::Net(net.trunc()));
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        if s.contains('/') {
            return Err(err("it is not a valid CIDR"));
        }
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("*.") {
            if rest.is_empty() || !valid_host_chars(rest) {
                return Err(err("the pattern after *. is not a host name"));
            }
            return Ok(Self::Suffix(format!(".{rest}")));
        }
        if !valid_host_chars(&lower) {
            return Err(err("it is neither a CIDR nor a host name"));
        }
        Ok(Self::Host(lower))
    }
}

fn valid_host_chars(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Why a discovered URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Not http or https.
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The address is not public and not allowlisted.
    #[error(
        "{host} is {class} address {ip}; allow it with --allow-private {suggest} (or discovery.allowPrivate)",
        class = .class.describe(),
        suggest = IpNet::from(*.ip)
    )]
    Address {
        /// The host as written.
        host: String,
        /// The offending address.
        ip: IpAddr,
        /// Its class.
        class: AddressClass,
    },
    /// A cluster-internal or local name that is not allowlisted.
    #[error(
        "{0} is a cluster-internal or local name; allow it with --allow-private {0} (or discovery.allowPrivate)"
    )]
    InternalName(String),
    /// The name did not resolve.
    #[error("{host} does not resolve: {why}")]
    Unresolvable {
        /// The host.
        host: String,
        /// The resolver's error.
        why: String,
    },
}

/// The rule for discovered URLs: public addresses pass, everything else needs an allowlist entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddressPolicy {
    allow: Vec<AllowEntry>,
}

impl AddressPolicy {
    /// Public addresses only.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Public addresses plus the given CIDRs, addresses and host patterns.
    pub fn with_allowlist<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowEntryError> {
        let mut allow = entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<Vec<AllowEntry>, _>>()?;
        // Sorted and deduplicated, so that equal lists give equal policies (the cache key).
        allow.sort();
        allow.dedup();
        Ok(Self { allow })
    }

    /// True when nothing beyond public addresses is allowed.
    pub fn is_strict(&self) -> bool {
        self.allow.is_empty()
    }

    /// The allowlist in canonical form (for cache keys and messages).
    pub fn entries(&self) -> Vec<String> {
        self.allow
            .iter()
            .map(|e| match e {
                AllowEntry::Net(n) => n.to_string(),
                AllowEntry::Host(h) => h.clone(),
                AllowEntry::Suffix(s) => format!("*{s}"),
            })
            .collect()
    }

    /// Whether the host name matches an allowlisted host pattern (which allows whatever it
    /// resolves to).
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow.iter().any(|e| match e {
            AllowEntry::Host(h) => *h == host,
            AllowEntry::Suffix(s) => host.ends_with(s.as_str()),
            AllowEntry::Net(_) => false,
        })
    }

    /// Whether an address may be dialled: public, or inside an allowlisted CIDR.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        classify(ip) == AddressClass::Public
            || self.allow.iter().any(|e| match e {
                AllowEntry::Net(net) => net.contains(&ip),
                _ => false,
            })
    }

    /// Checks an address; `host` is only for the message.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), UrlRefusal> {
        if self.ip_allowed(ip) {
            Ok(())
        } else {
            Err(UrlRefusal::Address {
                host: host.to_string(),
                ip: canonical(ip),
                class: classify(canonical(ip)),
            })
        }
    }

    /// Everything that can be checked without DNS: scheme, literal addresses, internal names.
    /// A URL that passes still has its name checked when it is resolved.
    pub fn check_url(&self, url: &Url) -> Result<(), UrlRefusal> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlRefusal::Scheme(url.scheme().to_string()));
        }
        match url.host() {
            None => Err(UrlRefusal::NoHost),
            Some(Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(&format!("[{ip}]"), IpAddr::V6(ip)),
            Some(Host::Domain(name)) => self.check_name(name),
        }
    }

    /// Refuses cluster-internal and local names unless allowlisted.
    pub fn check_name(&self, name: &str) -> Result<(), UrlRefusal> {
        if is_internal_name(name) && !self.host_allowed(name) {
            Err(UrlRefusal::InternalName(name.to_string()))
        } else {
            Ok(())
        }
    }

    /// Checks every address a name resolved to. All must pass: a name that resolves to one public
    /// and one private address could be dialled on either.
    pub fn check_resolved(&self, name: &str, addrs: &[SocketAddr]) -> Result<(), UrlRefusal> {
        if self.host_allowed(name) {
            return Ok(());
        }
        self.check_name(name)?;
        addrs
            .iter()
            .try_for_each(|addr| self.check_ip(name, addr.ip()))
    }

    /// Resolves a URL's host once and checks the result: what the connection would dial.
    /// Used to vet a discovered endpoint before it is handed to the scheduler.
    pub async fn resolve_url(&self, url: &Url) -> Result<Vec<SocketAddr>, UrlRefusal> {
        self.check_url(url)?;
        let port = url.port_or_known_default().unwrap_or(443);
        match url.host() {
            Some(Host::Ipv4(ip)) => Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]),
            Some(Host::Ipv6(ip)) => Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]),
            Some(Host::Domain(name)) => {
                let addrs = lookup(name, port).await?;
                self.check_resolved(name, &addrs)?;
                Ok(addrs)
            }
            None => Err(UrlRefusal::NoHost),
        }
    }

    /// A reqwest client builder whose every connection goes through this policy: names are
    /// resolved by a [`PinnedResolver`], redirects are checked, and no proxy is used (a proxy
    /// would resolve the name itself, after our check). Literal-address URLs bypass DNS, so
    /// callers still run [`AddressPolicy::check_url`] before each request.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        crate::http::ensure_crypto_provider();
        let redirect_policy = self.clone();
        reqwest::Client::builder()
            .dns_resolver(PinnedResolver::new(self.clone()))
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                match redirect_policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                }
            }))
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address, so a CIDR like 127.0.0.0/8 covers
/// `::ffff:127.0.0.1` and nothing else.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

async fn lookup(name: &str, port: u16) -> Result<Vec<SocketAddr>, UrlRefusal> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| UrlRefusal::Unresolvable {
            host: name.to_string(),
            why: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(UrlRefusal::Unresolvable {
            host: name.to_string(),
            why: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// A DNS resolver for reqwest that returns only addresses the policy allows, so a connection
/// always goes to an address that was checked.
#[derive(Clone, Debug)]
pub struct PinnedResolver {
    policy: Arc<AddressPolicy>,
}

impl PinnedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: AddressPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: reqwest substitutes the URL's port.
            let addrs = lookup(&host, 0).await?;
            policy.check_resolved(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl fmt::Display for AddressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.allow.is_empty() {
            f.write_str("public addresses only")
        } else {
            write!(f, "public addresses and {}", self.entries().join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn classifies_every_special_range() {
        let cases = [
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.255.254", AddressClass::Loopback),
            ("10.0.0.1", AddressClass::Private),
            ("10.42.7.9", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("169.254.0.1", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::CarrierGradeNat),
            ("100.127.255.255", AddressClass::CarrierGradeNat),
            ("192.0.0.8", AddressClass::Reserved),
            ("192.0.2.1", AddressClass::Documentation),
            ("198.51.100.1", AddressClass::Documentation),
            ("203.0.113.1", AddressClass::Documentation),
            ("198.18.0.1", AddressClass::Benchmarking),
            ("224.0.0.1", AddressClass::Multicast),
            ("240.0.0.1", AddressClass::Reserved),
            ("255.255.255.255", AddressClass::Broadcast),
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("fe80::1", AddressClass::LinkLocal),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("fec0::1", AddressClass::SiteLocal),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Documentation),
            ("2001::1", AddressClass::Reserved),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("::ffff:10.1.2.3", AddressClass::Private),
            ("::127.0.0.1", AddressClass::Reserved),
            ("64:ff9b::a9fe:a9fe", AddressClass::Reserved),
            ("2002:c0a8:0101::1", AddressClass::Reserved),
            ("100::1", AddressClass::Reserved),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass_strict_policy() {
        let strict = AddressPolicy::strict();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "169.253.0.1",
            "192.169.0.1",
            "11.0.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(strict.ip_allowed(ip(addr)), "{addr} should be public");
        }
    }

    #[test]
    fn strict_policy_refuses_every_non_public_range() {
        let strict = AddressPolicy::strict();
        for addr in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.251",
            "255.255.255.255",
        ] {
            let err = strict.check_ip("h", ip(addr)).unwrap_err();
            assert!(
                matches!(err, UrlRefusal::Address { .. }),
                "{addr} gave {err:?}"
            );
        }
    }

    #[test]
    fn allowing_one_range_allows_nothing_else() {
        let policy = AddressPolicy::with_allowlist(&["127.0.0.0/8"]).unwrap();
        assert!(policy.ip_allowed(ip("127.0.0.1")));
        assert!(policy.ip_allowed(ip("127.3.4.5")));
        assert!(policy.ip_allowed(ip("::ffff:127.0.0.1")));
        for addr in [
            "::1",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!policy.ip_allowed(ip(addr)), "{addr} must stay refused");
        }
        let one = AddressPolicy::with_allowlist(&["127.0.0.1/32"]).unwrap();
        assert!(one.ip_allowed(ip("127.0.0.1")));
        assert!(!one.ip_allowed(ip("127.0.0.2")));
        let cluster = AddressPolicy::with_allowlist(&["10.42.0.0/16"]).unwrap();
        assert!(cluster.ip_allowed(ip("10.42.3.4")));
        assert!(!cluster.ip_allowed(ip("10.43.0.1")));
        assert!(!cluster.ip_allowed(ip("169.254.169.254")));
    }

    #[test]
    fn bare_addresses_are_single_host_entries() {
        let policy = AddressPolicy::with_allowlist(&["127.0.0.1", "[::1]"]).unwrap();
        assert_eq!(policy.entries(), vec!["127.0.0.1/32", "::1/128"]);
        assert!(policy.ip_allowed(ip("::1")));
        assert!(!policy.ip_allowed(ip("127.0.0.2")));
    }

    #[test]
    fn cluster_names_need_a_host_pattern() {
        let strict = AddressPolicy::strict();
        for name in [
            "worker.autoresearch.svc.cluster.local",
            "worker.autoresearch.svc",
            "localhost",
            "api.localhost",
            "remote-signer",
            "metadata.google.internal",
        ] {
            let u = url(&format!("http://{name}:8080/services/w"));
            assert!(
                matches!(strict.check_url(&u), Err(UrlRefusal::InternalName(_))),
                "{name}"
            );
        }
        let policy = AddressPolicy::with_allowlist(&["*.autoresearch.svc.cluster.local"]).unwrap();
        assert!(
            policy
                .check_url(&url("http://worker.autoresearch.svc.cluster.local/"))
                .is_ok()
        );
        assert!(
            policy
                .check_url(&url("http://worker.other.svc.cluster.local/"))
                .is_err()
        );
        // The pattern names subdomains, not the apex.
        assert!(
            policy
                .check_url(&url("http://autoresearch.svc.cluster.local/"))
                .is_err()
        );
        // A host pattern allows whatever the name resolves to (ClusterIPs are private).
        let addrs = [SocketAddr::new(ip("10.96.0.10"), 80)];
        assert!(
            policy
                .check_resolved("w.autoresearch.svc.cluster.local", &addrs)
                .is_ok()
        );
        assert!(strict.check_resolved("worker.example.com", &addrs).is_err());
    }

    #[test]
    fn literal_hosts_and_schemes_are_checked_without_dns() {
        let strict = AddressPolicy::strict();
        for u in [
            "http://127.0.0.1:8080/x",
            "http://0.0.0.0/",
            "http://[::1]:9/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:7f00:1]/",
            "http://10.1.1.1/",
            // Other spellings of 127.0.0.1 that URL parsers accept.
            "http://0x7f000001/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://127.1/",
        ] {
            assert!(strict.check_url(&url(u)).is_err(), "{u}");
        }
        assert!(matches!(
            strict.check_url(&url("file:///etc/passwd")),
            Err(UrlRefusal::Scheme(_))
        ));
        assert!(strict.check_url(&url("https://93.184.216.34/")).is_ok());
        assert!(
            strict
                .check_url(&url("https://worker.example.com/services/w"))
                .is_ok()
        );
    }

    #[test]
    fn mixed_resolution_is_refused() {
        let strict = AddressPolicy::strict();
        let addrs = [
            SocketAddr::new(ip("93.184.216.34"), 443),
            SocketAddr::new(ip("127.0.0.1"), 443),
        ];
        assert!(strict.check_resolved("rebind.example.com", &addrs).is_err());
    }

    #[test]
    fn malformed_entries_are_named() {
        for bad in ["", "10.0.0.0/33", "*.", "not a host", "http://x"] {
            let err = AddressPolicy::with_allowlist(&[bad]).unwrap_err();
            assert!(err.to_string().contains("allow-private"), "{bad}");
        }
        let a = AddressPolicy::with_allowlist(&["10.0.0.0/8", "10.1.2.3/8"]).unwrap();
        assert_eq!(a.entries(), vec!["10.0.0.0/8"]);
    }

    #[test]
    fn refusal_tells_how_to_allow() {
        let err = AddressPolicy::strict()
            .check_ip("w.example", ip("10.42.0.5"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("private") && msg.contains("--allow-private 10.42.0.5/32"));
    }
}
