//! The outbound HTTP client every API client uses: it refuses to connect to private, loopback,
//! link-local and metadata addresses (checked on the resolved addresses, at connect time, so a
//! DNS name cannot smuggle one in) unless private egress is explicitly allowed, and it never
//! follows redirects (a redirect could point anywhere).
//!
//! Outbound webhooks use the same rule with an operator's allow-list instead of an all-or-nothing
//! switch ([`EgressAllowList`], [`check_webhook_endpoint`], [`webhook_client`]): endpoints must be
//! `https` (plain `http` only for allow-listed hosts), and a name resolving to a forbidden
//! address is refused at connect time, after resolution, so DNS rebinding does not get past it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use thiserror::Error;

/// Which destinations outbound calls may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressPolicy {
    /// Public addresses only (the default).
    #[default]
    PublicOnly,
    /// Any address, loopback and private ranges included: for development and tests against
    /// local stand-ins of vendors.
    AllowPrivate,
}

#[derive(Debug, Error)]
pub enum EgressError {
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// Whether `ip` is an address the public internet routes to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                // 100.64.0.0/10, carrier-grade NAT.
                || (a == 100 && (64..128).contains(&b))
                // 198.18.0.0/15, benchmarking.
                || (a == 198 && (b == 18 || b == 19))
                // 192.0.0.0/24, IETF protocol assignments (DS-Lite, NAT64 discovery...).
                || (a == 192 && b == 0 && c == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            let first = segments[0];
            // 64:ff9b::/96 (NAT64) and 2002::/16 (6to4) carry an IPv4 address: judge that one.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b] = segments;
                return is_public(IpAddr::V4(std::net::Ipv4Addr::from((u32::from(a) << 16) | u32::from(b))));
            }
            // ::ffff:0:a.b.c.d, the IPv4-translated form (SIIT): judge the IPv4 address.
            if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
                let [.., a, b] = segments;
                return is_public(IpAddr::V4(std::net::Ipv4Addr::from((u32::from(a) << 16) | u32::from(b))));
            }
            if first == 0x2002 {
                return is_public(IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(segments[1]) << 16) | u32::from(segments[2]),
                )));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local (fd00:ec2::254 is a cloud metadata address), fe80::/10
                // link-local, fec0::/10 the old site-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                // 2001:db8::/32, documentation.
                || (first == 0x2001 && segments[1] == 0x0db8)
                // ::/96, the deprecated IPv4-compatible form (::127.0.0.1).
                || (segments[..6] == [0; 6])
                // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): whatever IPv4 address it embeds,
                // it is translated inside a private network, never on the public internet.
                || segments[..3] == [0x64, 0xff9b, 1]
                // 2001::/32, Teredo: it tunnels to an (obfuscated) IPv4 address it carries, which
                // cannot be checked at connect time as the relay decides where it goes.
                || (first == 0x2001 && segments[1] == 0)
                // 100::/64, discard-only.
                || segments[..4] == [0x100, 0, 0, 0])
        }
    }
}

/// A response body read up to a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedBody {
    /// At most the bound's bytes.
    pub bytes: Vec<u8>,
    /// The body had more than the bound (the rest was never read).
    pub truncated: bool,
}

/// Reads `response`'s body chunk by chunk and stops once it holds more than `max` bytes: a
/// peer answering a huge (or endless) body costs at most `max` bytes and one chunk of memory.
pub async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<CappedBody, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > max {
            bytes.truncate(max);
            return Ok(CappedBody { bytes, truncated: true });
        }
    }
    Ok(CappedBody { bytes, truncated: false })
}

/// A resolver that drops every address the policy forbids; a name with none left fails.
struct PolicyResolver;

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved.into_iter().filter(|a| is_public(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to non-public addresses, which egress policy refuses").into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Builds the outbound client for `policy`.
pub fn http_client(policy: EgressPolicy, connect_timeout: Duration) -> Result<reqwest::Client, EgressError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(concat!("integration-engine/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if policy == EgressPolicy::PublicOnly {
        builder = builder.dns_resolver(Arc::new(PolicyResolver));
    }
    builder.build().map_err(|e| EgressError::Client(e.to_string()))
}

/// Refuses a URL whose host is a literal non-public address (a resolver never sees those).
pub fn check_url(policy: EgressPolicy, url: &reqwest::Url) -> Result<(), String> {
    if policy == EgressPolicy::AllowPrivate {
        return Ok(());
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(d)) if is_loopback_name(d) => {
            return Err(format!("{url} is a loopback address, which egress policy refuses"));
        }
        Some(url::Host::Domain(_)) => None,
        None => return Err(format!("{url} has no host")),
    };
    match literal {
        Some(ip) if !is_public(ip) => Err(format!("{ip} is not a public address, which egress policy refuses")),
        _ => Ok(()),
    }
}

/// Hosts and addresses outbound webhooks may reach although they are not public (a receiver on
/// the same machine in development and tests, a partner's endpoint on a private link). Entries:
/// a host name (`hooks.internal`, matched exactly, case-insensitively), an IP address
/// (`127.0.0.1`, `::1`) or a network (`10.20.0.0/16`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressAllowList {
    hosts: Vec<String>,
    networks: Vec<(IpAddr, u8)>,
}

impl EgressAllowList {
    /// Reads a comma-separated list; an empty string allows nothing.
    pub fn parse(entries: &str) -> Result<Self, String> {
        let mut list = Self::default();
        for entry in entries.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some((address, bits)) = entry.split_once('/') {
                let ip: IpAddr = address.parse().map_err(|_| format!("{entry}: not an address/prefix"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or(format!("{entry}: bad prefix length"))?;
                list.networks.push((ip, bits));
            } else if let Ok(ip) = entry.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                list.networks.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else if entry.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')) {
                list.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!("{entry}: not a host name, an address or a network"));
            }
        }
        Ok(list)
    }

    /// Whether `ip` is in one of the listed addresses or networks.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|(network, bits)| in_network(ip, *network, *bits))
    }

    /// Whether the URL host (a name or a literal address) is listed.
    pub fn allows_host(&self, host: &url::Host<&str>) -> bool {
        match host {
            url::Host::Domain(name) => self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name)),
            url::Host::Ipv4(v4) => self.allows_ip(IpAddr::V4(*v4)),
            url::Host::Ipv6(v6) => self.allows_ip(IpAddr::V6(*v6)),
        }
    }

    fn allows_name(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            (u32::from(ip) & mask) == (u32::from(net) & mask)
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            (u128::from(ip) & mask) == (u128::from(net) & mask)
        }
        _ => false,
    }
}

/// Checks a webhook endpoint URL before it is stored and before each delivery: `https`, or plain
/// `http` for an allow-listed host; no credentials in the URL; a literal address (or `localhost`)
/// must be public or allow-listed. Names are checked again at connect time by [`webhook_client`].
/// The error is the reason, for a 422.
pub fn check_webhook_endpoint(endpoint: &str, allow: &EgressAllowList) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
    let host = url.host().ok_or("the URL has no host")?;
    let allowed_host = allow.allows_host(&host);
    match url.scheme() {
        "https" => {}
        "http" if allowed_host => {}
        "http" => return Err(format!("must be https (plain http only for allow-listed hosts; {host} is not one)")),
        other => return Err(format!("must be https, not {other}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let literal = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) if !allowed_host && is_loopback_name(d) => {
            return Err(format!("{d} is a loopback name, which egress policy refuses"));
        }
        url::Host::Domain(_) => None,
    };
    match literal {
        Some(ip) if !is_public(ip) && !allow.allows_ip(ip) => {
            Err(format!("{ip} is a {} address, which egress policy refuses", address_kind(ip)))
        }
        _ => Ok(url),
    }
}

/// `localhost` and its subdomains (RFC 6761), in any case and with or without the trailing dot
/// of a fully qualified name (`localhost.` resolves like `localhost`).
fn is_loopback_name(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// What kind of non-public address `ip` is, for the refusal's reason.
pub fn address_kind(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..2] == [169, 254] && v4.octets()[2..] == [169, 254] => "cloud metadata",
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_private() => "private",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local",
        IpAddr::V4(v4) if v4.is_multicast() => "multicast",
        IpAddr::V4(v4) if v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) => "carrier-grade NAT",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V6(v6) if v6.is_multicast() => "multicast",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link-local",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "unique-local (private)",
        _ if is_public(ip) => "public",
        _ => "reserved",
    }
}

/// The resolver of webhook deliveries: a name on the allow-list resolves as it is; any other
/// keeps only public or allow-listed addresses, and fails when none is left.
struct AllowListResolver {
    allow: Arc<EgressAllowList>,
}

impl Resolve for AllowListResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow = self.allow.clone();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = if allow.allows_name(&host) {
                resolved
            } else {
                resolved.into_iter().filter(|a| is_public(a.ip()) || allow.allows_ip(a.ip())).collect()
            };
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to non-public addresses, which egress policy refuses").into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The client of webhook deliveries: the allow-list resolver, no redirects, no proxy, one
/// connection pool per endpoint host.
pub fn webhook_client(allow: Arc<EgressAllowList>, connect_timeout: Duration) -> Result<reqwest::Client, EgressError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(concat!("integration-engine-webhooks/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .dns_resolver(Arc::new(AllowListResolver { allow }))
        .build()
        .map_err(|e| EgressError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["140.82.112.6", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_private_urls_are_refused_unless_allowed() {
        let url = reqwest::Url::parse("http://127.0.0.1:8080/x").unwrap();
        assert!(check_url(EgressPolicy::PublicOnly, &url).is_err());
        assert!(check_url(EgressPolicy::AllowPrivate, &url).is_ok());
        let metadata = reqwest::Url::parse("http://169.254.169.254/latest").unwrap();
        assert!(check_url(EgressPolicy::PublicOnly, &metadata).is_err());
        assert!(check_url(EgressPolicy::PublicOnly, &reqwest::Url::parse("https://api.github.com").unwrap()).is_ok());
    }

    #[test]
    fn ipv6_forms_of_private_ipv4_addresses_are_not_public() {
        for ip in [
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "fd00:ec2::254",
            "ff02::1",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:a00:1::",
            "64:ff9b:1::808:808",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "192.0.0.1",
            "192.0.0.170",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_public("64:ff9b::808:808".parse().unwrap()));
        assert!(is_public("::ffff:0:8.8.8.8".parse().unwrap()));
        // Neighbours of the new ranges stay public.
        for ip in ["192.0.1.1", "2001:4860::8888", "100:0:0:1::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn webhook_endpoints_must_be_https_and_public_unless_allow_listed() {
        let none = EgressAllowList::default();
        let local = EgressAllowList::parse("127.0.0.1, hooks.internal, 10.20.0.0/16").unwrap();
        assert!(check_webhook_endpoint("https://hooks.partner.example/x", &none).is_ok());
        for (url, reason) in [
            ("http://hooks.partner.example/x", "must be https"),
            ("ftp://hooks.partner.example/x", "must be https"),
            ("https://127.0.0.1/x", "loopback"),
            ("https://10.0.0.1/x", "private"),
            ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
            ("https://100.64.1.1/", "carrier-grade NAT"),
            ("https://224.0.0.1/", "multicast"),
            ("https://[::1]/", "loopback"),
            ("https://[fe80::1]/", "link-local"),
            ("https://localhost/", "loopback"),
            ("https://localhost./x", "loopback"),
            ("https://LOCALHOST./x", "loopback"),
            ("https://api.localhost./x", "loopback"),
            ("https://user:pw@hooks.partner.example/", "credentials"),
        ] {
            let refused = check_webhook_endpoint(url, &none).expect_err(url);
            assert!(refused.contains(reason), "{url}: {refused}");
        }
        assert!(check_webhook_endpoint("http://127.0.0.1:9000/hook", &local).is_ok());
        assert!(check_webhook_endpoint("http://hooks.internal/hook", &local).is_ok());
        assert!(check_webhook_endpoint("https://10.20.3.4/hook", &local).is_ok());
        assert!(check_webhook_endpoint("https://10.21.3.4/hook", &local).is_err());
        assert!(check_webhook_endpoint("http://127.0.0.2/hook", &local).is_err());
        assert!(EgressAllowList::parse("a b").is_err());
        assert!(EgressAllowList::parse("10.0.0.0/33").is_err());
    }

    /// A name that resolves to a loopback address is refused when the client connects, whatever
    /// the URL looked like: what DNS rebinding would need.
    #[tokio::test]
    async fn a_name_resolving_to_a_forbidden_address_is_refused_at_connect_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                let _ = socket.shutdown().await;
            }
        });
        // The client alone (no URL check): only the resolver stands between a name and 127.0.0.1.
        let url = format!("http://localhost:{port}/hook");
        let refusing = webhook_client(Arc::new(EgressAllowList::default()), Duration::from_secs(2)).unwrap();
        let error = refusing.get(&url).send().await.expect_err("loopback must be refused");
        assert!(format!("{error:?}").contains("egress policy"), "{error:?}");
        let allowing =
            webhook_client(Arc::new(EgressAllowList::parse("127.0.0.1").unwrap()), Duration::from_secs(2)).unwrap();
        assert_eq!(allowing.get(&url).send().await.unwrap().status(), 200);
    }
}
