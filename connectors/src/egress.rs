//! The outbound HTTP client every API client uses: it refuses to connect to private, loopback,
//! link-local and metadata addresses (checked on the resolved addresses, at connect time, so a
//! DNS name cannot smuggle one in) unless private egress is explicitly allowed, and it never
//! follows redirects (a redirect could point anywhere).

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
            let [a, b, ..] = v4.octets();
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
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
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
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => {
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
}
