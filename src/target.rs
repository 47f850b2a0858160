//! Where the relay may send deliveries: the target-URL rules of the hook API, applied when a hook is
//! attached and again to every address a hook's host resolves to at delivery time.
//!
//! Pure; imports nothing from the crate. Forbidden addresses include loopback, private,
//! link-local, CGNAT, multicast, unspecified and reserved ranges, also when wrapped in
//! IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use url::{Host, Url};

/// Longest target URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// The Make / Integromat webhook hosts: where 410 means "no scenario is listening right now",
/// not "this hook is gone" (`RELAY_MAKE_HOSTS`).
pub const MAKE_HOSTS: &str = "hook.integromat.com,hook.*.make.com,hook.make.com";

/// The hosts allowed by default: Make's / Integromat's and Zapier's REST Hooks host.
pub const DEFAULT_HOSTS: &str = "hook.integromat.com,hook.*.make.com,hook.make.com,hooks.zapier.com";

/// Whether `url`'s host matches one of `patterns` (false for a URL without a host).
pub fn host_matches(url: &str, patterns: &[HostPattern]) -> bool {
    let Ok(url) = Url::parse(url) else { return false };
    let host = match url.host() {
        Some(Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => return false,
    };
    patterns.iter().any(|p| p.matches(&host))
}

/// A host pattern: DNS labels where `*` stands for exactly one label; a lone `*` is any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(Vec<String>);

impl HostPattern {
    /// Parses one pattern such as `hook.*.make.com`.
    ///
    /// # Errors
    /// A pattern with an empty label or characters that cannot be in a host name.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        if pattern == "*" {
            return Ok(Self(vec!["*".into()]));
        }
        let labels: Vec<String> = pattern.split('.').map(str::to_owned).collect();
        for label in &labels {
            let ok = label == "*"
                || (!label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !ok {
                return Err(format!("host pattern {pattern:?} has an invalid label {label:?}"));
            }
        }
        Ok(Self(labels))
    }

    /// Whether `host` (already lowercase) matches, label by label.
    pub fn matches(&self, host: &str) -> bool {
        if self.0.len() == 1 && self.0[0] == "*" {
            return true;
        }
        let host = host.trim_end_matches('.');
        let labels: Vec<&str> = host.split('.').collect();
        labels.len() == self.0.len() && self.0.iter().zip(&labels).all(|(p, l)| p == "*" || p.eq_ignore_ascii_case(l))
    }
}

/// The ports a target may use by default: HTTPS's.
pub const DEFAULT_PORTS: &str = "443";

/// Longest DNS label, and longest host name.
const MAX_LABEL: usize = 63;
const MAX_HOST: usize = 253;

/// The target-URL rules in force.
#[derive(Debug, Clone)]
pub struct TargetPolicy {
    /// Allowed host patterns.
    pub hosts: Vec<HostPattern>,
    /// Allowed ports (the URL's, or 443 when it names none).
    pub ports: Vec<u16>,
    /// Local development only: allow `http`, any port, and loopback/private addresses.
    pub allow_private: bool,
}

impl TargetPolicy {
    /// Parses a comma-separated host pattern list, as `RELAY_TARGET_HOSTS` holds it.
    ///
    /// # Errors
    /// An empty list or an invalid pattern.
    pub fn parse_hosts(list: &str) -> Result<Vec<HostPattern>, String> {
        let hosts =
            list.split(',').filter(|p| !p.trim().is_empty()).map(HostPattern::parse).collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err("the host list is empty".into());
        }
        Ok(hosts)
    }

    /// Parses a comma-separated port list, as `RELAY_TARGET_PORTS` holds it.
    ///
    /// # Errors
    /// An empty list or a value that is not a port.
    pub fn parse_ports(list: &str) -> Result<Vec<u16>, String> {
        let ports = list
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{p:?} is not a port")))
            .collect::<Result<Vec<_>, _>>()?;
        if ports.is_empty() {
            return Err("the port list is empty".into());
        }
        Ok(ports)
    }

    /// Checks a URL offered for a hook, and again before every delivery (a hook attached under
    /// looser settings must not keep receiving); the error says which rule failed.
    ///
    /// # Errors
    /// A sentence naming the broken rule, sent to the client as `invalid_url`.
    pub fn check(&self, raw: &str) -> Result<Url, String> {
        if raw.len() > MAX_URL_LEN {
            return Err(format!("the url is longer than {MAX_URL_LEN} bytes"));
        }
        let url = Url::parse(raw).map_err(|e| format!("the url is not an absolute URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            _ => return Err("the url must use https".into()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the url must not carry credentials".into());
        }
        let host = match url.host() {
            None => return Err("the url has no host".into()),
            Some(Host::Domain("")) => return Err("the url has no host".into()),
            Some(host) => host,
        };
        let name = match host {
            Host::Ipv4(ip) => self.check_ip(IpAddr::V4(ip))?,
            Host::Ipv6(ip) => self.check_ip(IpAddr::V6(ip))?,
            Host::Domain(d) if !self.allow_private && is_localhost(d) => {
                return Err("the url's host is localhost, which is never a valid target".into());
            }
            Host::Domain(d) => host_name(d)?,
        };
        if !self.hosts.iter().any(|p| p.matches(&name)) {
            return Err(format!("the host {name} is not in the allowed target hosts"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        if !self.allow_private && !self.ports.contains(&port) {
            return Err(format!("the port {port} is not an allowed target port"));
        }
        Ok(url)
    }

    /// The address as a host name, or why it may not be a target.
    fn check_ip(&self, ip: IpAddr) -> Result<String, String> {
        if !self.allows_address(ip) {
            return Err(format!("the address {ip} is loopback, private, link-local, multicast or unspecified"));
        }
        Ok(ip.to_string())
    }

    /// Whether a delivery may connect to `ip` (the resolved-address check).
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_forbidden(ip)
    }
}

/// A domain as a host name: dot-separated labels of letters, digits, `-` and `_`, each at most
/// 63 characters, at most 253 in all (lowercase; the URL parser has already turned an
/// international name into its `xn--` form).
fn host_name(domain: &str) -> Result<String, String> {
    let name = domain.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=MAX_LABEL).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > MAX_HOST || !name.split('.').all(label_ok) {
        return Err("the url's host is not a valid host name".into());
    }
    Ok(name)
}

fn is_localhost(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// Whether `ip` is an address the relay must never deliver to.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => embedded_v4(v6).map_or_else(|| forbidden_v6(v6), forbidden_v4),
    }
}

const FORBIDDEN_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0a00_0000, 8),  // 10/8 private
    (0x6440_0000, 10), // 100.64/10 CGNAT
    (0x7f00_0000, 8),  // 127/8 loopback
    (0xa9fe_0000, 16), // 169.254/16 link-local and cloud metadata
    (0xac10_0000, 12), // 172.16/12 private
    (0xc000_0000, 24), // 192.0.0/24 IETF protocol assignments
    (0xc000_0200, 24), // 192.0.2/24 documentation
    (0xc0a8_0000, 16), // 192.168/16 private
    (0xc612_0000, 15), // 198.18/15 benchmarking
    (0xc633_6400, 24), // 198.51.100/24 documentation
    (0xcb00_7100, 24), // 203.0.113/24 documentation
    (0xe000_0000, 4),  // 224/4 multicast
    (0xf000_0000, 4),  // 240/4 reserved and broadcast
];

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    FORBIDDEN_V4.iter().any(|&(net, len)| Ipv4Net::new(Ipv4Addr::from(net), len).is_ok_and(|n| n.contains(&ip)))
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    const NETS: &[(u128, u8)] = &[
        (0, 127),                                        // :: and ::1
        (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7),  // unique local (incl. fd00:ec2::254)
        (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // link-local
        (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), // site-local (deprecated)
        (0xff00_0000_0000_0000_0000_0000_0000_0000, 8),  // multicast
        (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // documentation
        (0x0100_0000_0000_0000_0000_0000_0000_0000, 64), // discard-only
    ];
    NETS.iter().any(|&(net, len)| Ipv6Net::new(Ipv6Addr::from(net), len).is_ok_and(|n| n.contains(&ip)))
}

/// The IPv4 address carried inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1);
    if mapped || compatible || nat64 {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn strict() -> TargetPolicy {
        TargetPolicy {
            hosts: TargetPolicy::parse_hosts(DEFAULT_HOSTS).unwrap(),
            ports: vec![443],
            allow_private: false,
        }
    }

    fn any_host() -> TargetPolicy {
        TargetPolicy { hosts: TargetPolicy::parse_hosts("*").unwrap(), ports: vec![443], allow_private: false }
    }

    #[test]
    fn accepts_make_hosts() {
        for url in [
            "https://hook.integromat.com/abc",
            "https://hook.eu1.make.com/abc",
            "https://HOOK.US2.MAKE.COM/abc",
            "https://hook.make.com/abc?x=1",
        ] {
            assert!(strict().check(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn refuses_with_the_rule_that_failed() {
        let cases = [
            ("http://hook.make.com/a", "https"),
            ("hook.make.com/a", "absolute"),
            ("https://evil.com/a", "allowed target hosts"),
            ("https://hook.eu1.eu2.make.com/a", "allowed target hosts"),
            ("https://xhook.eu1.make.com/a", "allowed target hosts"),
            ("https://u:p@hook.make.com/a", "credentials"),
        ];
        for (url, why) in cases {
            let err = strict().check(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
        let long = format!("https://hook.make.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(strict().check(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn refuses_inward_addresses_in_any_spelling() {
        for url in [
            "https://127.0.0.1/a",
            "https://2130706433/a",
            "https://0x7f.1/a",
            "https://[::1]/a",
            "https://[::ffff:127.0.0.1]/a",
            "https://[::ffff:a9fe:a9fe]/a",
            "https://[64:ff9b::a00:1]/a",
            "https://10.1.2.3/a",
            "https://169.254.169.254/latest",
            "https://[fd00:ec2::254]/a",
            "https://100.64.0.1/a",
            "https://0.0.0.0/a",
            "https://[::]/a",
            "https://224.0.0.1/a",
            "https://localhost/a",
            "https://api.localhost./a",
        ] {
            assert!(any_host().check(url).is_err(), "{url}");
        }
        assert!(any_host().check("https://93.184.216.34/a").is_ok());
    }

    #[test]
    fn development_mode_allows_local_http() {
        let dev =
            TargetPolicy { hosts: TargetPolicy::parse_hosts("*").unwrap(), ports: vec![443], allow_private: true };
        assert!(dev.check("http://127.0.0.1:8080/a").is_ok());
        assert!(dev.check("http://localhost:9/a").is_ok());
        assert!(dev.check("ftp://127.0.0.1/a").is_err());
    }

    #[test]
    fn ports_and_host_name_syntax_are_checked() {
        let p = any_host();
        assert!(p.check("https://hook.eu1.make.com:443/x").is_ok());
        assert!(p.check("https://hook.eu1.make.com:8443/x").unwrap_err().contains("port 8443"));
        let other = TargetPolicy { ports: vec![8443], ..any_host() };
        assert!(other.check("https://hook.eu1.make.com:8443/x").is_ok());
        assert!(other.check("https://hook.eu1.make.com/x").is_err(), "443 is then not allowed");
        for bad in [
            "https://hook.a\"b.make.com/x",
            &format!("https://{}.make.com/x", "a".repeat(64)),
            &format!("https://{}com/x", "a.".repeat(130)),
        ] {
            assert!(p.check(bad).is_err(), "{bad}");
        }
        assert!(p.check(&format!("https://{}.make.com/x", "a".repeat(63))).is_ok());
        assert_eq!(TargetPolicy::parse_ports("443, 8443").unwrap(), [443, 8443]);
        assert!(TargetPolicy::parse_ports("0").is_err() && TargetPolicy::parse_ports("").is_err());
    }

    #[test]
    fn wildcards_stand_for_exactly_one_label() {
        let p = HostPattern::parse("hook.*.make.com").unwrap();
        assert!(p.matches("hook.eu1.make.com"));
        assert!(!p.matches("hook.make.com"));
        assert!(!p.matches("hook.a.b.make.com"));
        assert!(HostPattern::parse("bad..host").is_err());
        assert!(TargetPolicy::parse_hosts(" , ").is_err());
    }

    #[test]
    fn embedded_ipv4_is_unwrapped() {
        assert!(is_forbidden("2002:7f00:1::".parse().unwrap()));
        assert!(is_forbidden("::127.0.0.1".parse().unwrap()));
        assert!(!is_forbidden("2606:4700::1111".parse().unwrap()));
        assert!(!is_forbidden("1.1.1.1".parse().unwrap()));
    }

    /// Addresses biased towards the forbidden ranges.
    fn v4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>(),
            (0u32..0x00ff_ffff).prop_map(|x| 0x7f00_0000 | x),
            (0u32..0x00ff_ffff).prop_map(|x| 0x0a00_0000 | x),
            (0u32..0xffff).prop_map(|x| 0xa9fe_0000 | x),
            (0u32..0x003f_ffff).prop_map(|x| 0x6440_0000 | x),
            (0u32..0x00ff_ffff),
        ]
        .prop_map(Ipv4Addr::from)
    }

    /// The ways a URL parser accepts to write an IPv4 address.
    fn spellings(ip: Ipv4Addr) -> Vec<String> {
        let n = u32::from(ip);
        let [a, b, c, d] = ip.octets();
        vec![
            ip.to_string(),
            n.to_string(),
            format!("0x{n:x}"),
            format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
            format!("{a}.{}", u32::from(b) << 16 | u32::from(c) << 8 | u32::from(d)),
            format!("[::ffff:{ip}]"),
            format!("[64:ff9b::{ip}]"),
        ]
    }

    proptest! {
        #[test]
        fn checking_never_panics(raw in ".{0,80}") {
            let _ = strict().check(&raw);
            let _ = any_host().check(&raw);
        }

        /// Whatever the spelling, a target that validates never points at a forbidden address.
        #[test]
        fn validated_targets_never_point_inward(ip in v4(), v6 in any::<Ipv6Addr>()) {
            let mut hosts = spellings(ip);
            hosts.push(format!("[{v6}]"));
            for host in hosts {
                let Ok(url) = any_host().check(&format!("https://{host}/hook")) else { continue };
                let parsed = match url.host() {
                    Some(Host::Ipv4(a)) => IpAddr::V4(a),
                    Some(Host::Ipv6(a)) => IpAddr::V6(a),
                    other => panic!("{host} validated as {other:?}"),
                };
                prop_assert!(!is_forbidden(parsed), "{host} → {parsed}");
            }
            prop_assert_eq!(any_host().check(&format!("https://{ip}/")).is_ok(), !is_forbidden(IpAddr::V4(ip)));
        }
    }
}
