//! Where a webhook may point. Its URL is a tenant's setting, so it must not reach the
//! operator's network: by default only `https://` URLs whose host resolves to public
//! addresses are called, every address is checked when it is resolved for the request (so a
//! name that resolves to a public address when the webhook is created and to 10.0.0.5 when
//! it is called is refused: no DNS rebinding), IP literals are checked the same way, and
//! redirects are not followed. Operators who run receivers on their own network (tests, a
//! backend beside chatd) allow it with `webhooks.allow_private_networks` and
//! `webhooks.allow_http`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What the operator allows webhook URLs to be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    pub http: bool,
    pub private_networks: bool,
}

/// Checks a URL an app gives: scheme, host, no credentials, a sane length.
pub fn check_url(raw: &str, allow: Allow) -> Result<url::Url, String> {
    if raw.len() > 2048 {
        return Err("url: at most 2048 characters".into());
    }
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("url: not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow.http => {}
        "http" => return Err("url: must be https:// (this server does not allow http webhooks)".into()),
        other => return Err(format!("url: must be https://, not {other}://")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url: must not carry credentials; check the signature instead".into());
    }
    match url.host() {
        None => return Err("url: has no host".into()),
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow)?,
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow)?,
        Some(url::Host::Domain(name)) => {
            if !allow.private_networks && (name == "localhost" || name.ends_with(".localhost")) {
                return Err("url: must not point at this machine".into());
            }
        }
    }
    Ok(url)
}

/// An address a webhook may be sent to.
pub fn check_ip(ip: IpAddr, allow: Allow) -> Result<(), String> {
    if allow.private_networks || is_public(ip) {
        Ok(())
    } else {
        Err(format!("url: {ip} is not a public address"))
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)) // NAT64 to anywhere, v4 private included
}

/// The resolver webhook requests use: the system's, then every address checked.
pub struct GuardedResolver {
    pub allow: Allow,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| check_ip(a.ip(), allow).is_ok()).collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address").into();
                return Err(error);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client of webhook requests: the guarded resolver, no redirects, a timeout.
pub fn client(allow: Allow, timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow }))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .user_agent("chatd-webhooks")
        .build()
        .expect("a webhook HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_urls_by_default() {
        let strict = Allow::default();
        assert!(check_url("https://hooks.example.com/chat", strict).is_ok());
        for bad in [
            "http://hooks.example.com/chat",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "https://localhost/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:192.168.1.1]/",
            "https://0.0.0.0/",
            "not a url",
        ] {
            assert!(check_url(bad, strict).is_err(), "{bad}");
        }
        let open = Allow {
            http: true,
            private_networks: true,
        };
        assert!(check_url("http://127.0.0.1:8080/hook", open).is_ok());
        assert!(check_ip("8.8.8.8".parse().unwrap(), strict).is_ok());
        assert!(check_ip("2606:4700::1111".parse().unwrap(), strict).is_ok());
    }

    /// A name that passes the URL check but resolves to this machine when called is refused
    /// at the connection, whatever it resolved to before (no DNS rebinding).
    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_when_called() {
        let resolver = GuardedResolver {
            allow: Allow::default(),
        };
        let name: Name = "localhost".parse().unwrap();
        let error = match resolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert_eq!(error, "localhost resolves to no public address");
        let open = GuardedResolver {
            allow: Allow {
                http: true,
                private_networks: true,
            },
        };
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
        // Through the client, as the worker sends: refused before any connection.
        let client = client(Allow::default(), std::time::Duration::from_secs(5));
        let error = client.get("https://localhost:9/").send().await.unwrap_err();
        let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" / ");
        assert!(chain.contains("no public address"), "{chain}");
    }
}
