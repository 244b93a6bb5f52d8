//! The browser rules: which `Host` names are answered before any key exists, and which requests
//! a browser marks as cross-site.

use super::*;

impl Access {
    /// Whether a request's `Host` may be answered while no key exists: a loopback name, or one
    /// in `allowed_hosts`.
    pub fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.typed_get::<Host>() else {
            return false;
        };
        is_loopback(host.hostname()) || self.listed(&host)
    }

    /// Whether `host` is in `allowed_hosts` (by name, or name and port).
    pub(super) fn listed(&self, host: &Host) -> bool {
        let config = self.inner.config.current();
        let with_port = host.to_string();
        config.allowed_hosts.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(host.hostname())
                || allowed.eq_ignore_ascii_case(&with_port)
        })
    }

    /// Whether a browser marks this state-changing request as cross-site: `Sec-Fetch-Site:
    /// cross-site`, or an `Origin` that is neither the request's `Host` nor in `allowed_hosts`.
    pub fn cross_site(&self, method: &Method, headers: &HeaderMap) -> bool {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return false;
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return true;
        }
        if !headers.contains_key(header::ORIGIN) {
            return false;
        }
        // `Origin: null` (a sandboxed frame, a file) or garbage: not this site.
        let Some(origin) = headers.typed_get::<Origin>().filter(|o| !o.is_null()) else {
            return true;
        };
        let authority = match origin.port() {
            Some(port) => format!("{}:{port}", origin.hostname()),
            None => origin.hostname().to_owned(),
        };
        let Ok(origin_host) = authority.parse::<http::uri::Authority>().map(Host::from) else {
            return true;
        };
        let same = headers
            .typed_get::<Host>()
            .is_some_and(|host| same_host(&host, &origin_host));
        !same && !self.listed(&origin_host)
    }
}

/// Whether two hosts are the same name and port (an absent port being the scheme's default on
/// both sides: a browser leaves it out of `Origin` exactly when the `Host` leaves it out).
pub(super) fn same_host(a: &Host, b: &Host) -> bool {
    a.hostname().eq_ignore_ascii_case(b.hostname()) && a.port() == b.port()
}

pub(super) fn is_loopback(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &'static str) -> Host {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, http::HeaderValue::from_static(value));
        headers.typed_get::<Host>().unwrap()
    }

    #[test]
    fn loopback_names_with_any_port() {
        for value in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback(host(value).hostname()), "{value}");
        }
        for value in [
            "example.com",
            "evil.localhost.example.com:80",
            "10.0.0.1:8080",
            "[::2]:1",
        ] {
            assert!(!is_loopback(host(value).hostname()), "{value}");
        }
    }
}
