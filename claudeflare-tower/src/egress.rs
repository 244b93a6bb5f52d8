//! A proxy an account's traffic goes through.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use http::Uri;

/// A proxy an account's traffic goes through.
///
/// Egress proxies: an account's traffic (its requests, token refreshes and usage polls) leaving
/// through a proxy of its own, so each account can have its own address.
///
/// [`EgressProxy`] is the URL (`http://`, `https://` or `socks5://`, with `user:password@`
/// allowed); its `Debug` and `Display` show the password as `***`. The request path connects
/// through it with hyper-util's proxy connectors (an HTTP `CONNECT` tunnel, or SOCKS5), one
/// connection pool per proxy; the control plane through reqwest's proxy support
/// (token grants, and the server's own calls).
#[derive(Clone)]
pub struct EgressProxy {
    /// The whole URL, credentials included.
    url: String,
    /// The same, parsed (the request path's connectors need the rustls-ring feature).
    #[cfg_attr(not(feature = "rustls-ring"), allow(dead_code))]
    uri: Uri,
    kind: ProxyKind,
}

/// The protocol spoken to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyKind {
    /// An HTTP proxy: `CONNECT` tunnels (and plain forwarding for `http://` control calls).
    Http,
    /// An HTTP proxy reached over TLS.
    Https,
    /// SOCKS5.
    Socks5,
}

/// A proxy URL that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid proxy `{shown}`: {problem} (expected http://, https:// or socks5://[user:password@]host:port)"
)]
pub struct InvalidProxy {
    shown: String,
    problem: &'static str,
}

impl EgressProxy {
    /// The protocol.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The URL with its credentials, for storing it (encrypted) and connecting. Never log it:
    /// [`Display`](fmt::Display) is for that.
    pub fn expose_url(&self) -> &str {
        &self.url
    }

    /// The proxy's own address, without credentials (`http://proxy:3128`).
    #[cfg_attr(not(feature = "rustls-ring"), allow(dead_code))]
    pub(crate) fn address(&self) -> Uri {
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Https => "https",
            ProxyKind::Socks5 => "socks5",
        };
        let host = self.uri.host().unwrap_or_default();
        let port = self.uri.port_u16().unwrap_or(match self.kind {
            ProxyKind::Http => 80,
            ProxyKind::Https => 443,
            ProxyKind::Socks5 => 1080,
        });
        // The parts come from a URI that parsed, so they make one again; fall back to the
        // parsed one (credentials and all are only used to connect, never shown).
        format!("{scheme}://{host}:{port}")
            .parse()
            .unwrap_or_else(|_| self.uri.clone())
    }

    /// The user and password, percent-decoded, when the URL has them.
    #[cfg_attr(not(feature = "rustls-ring"), allow(dead_code))]
    pub(crate) fn credentials(&self) -> Option<(String, String)> {
        let authority = self.uri.authority()?.as_str();
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Some((decode(user), decode(password)))
    }
}

impl FromStr for EgressProxy {
    type Err = InvalidProxy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let invalid = |problem| InvalidProxy {
            shown: redact(text),
            problem,
        };
        let uri: Uri = text.parse().map_err(|_| invalid("not a URL"))?;
        let kind = match uri.scheme_str() {
            Some("http") => ProxyKind::Http,
            Some("https") => ProxyKind::Https,
            Some("socks5" | "socks5h") => ProxyKind::Socks5,
            _ => return Err(invalid("the scheme must be http, https or socks5")),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if uri
            .path_and_query()
            .is_some_and(|pq| !matches!(pq.as_str(), "" | "/"))
        {
            return Err(invalid("a proxy URL has no path"));
        }
        Ok(Self {
            url: text.to_owned(),
            uri,
            kind,
        })
    }
}

/// `url` with the password of its `user:password@` replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EgressProxy({self})")
    }
}

impl PartialEq for EgressProxy {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for EgressProxy {}

impl Hash for EgressProxy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.url.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let proxy: EgressProxy = "socks5://me:s%40cret@127.0.0.1:1080".parse().unwrap();
        assert_eq!(proxy.kind(), ProxyKind::Socks5);
        assert_eq!(proxy.to_string(), "socks5://me:***@127.0.0.1:1080");
        assert!(!format!("{proxy:?}").contains("cret"));
        assert_eq!(
            proxy.credentials(),
            Some(("me".to_owned(), "s@cret".to_owned()))
        );
        assert_eq!(proxy.address().to_string(), "socks5://127.0.0.1:1080/");
        let plain: EgressProxy = "http://10.0.0.1:3128".parse().unwrap();
        assert_eq!(plain.to_string(), "http://10.0.0.1:3128");
        assert_eq!(plain.credentials(), None);
        for bad in [
            "ftp://x:1",
            "proxy:3128",
            "http://user:pw@",
            "http://h:1/path",
        ] {
            let error = bad.parse::<EgressProxy>().unwrap_err().to_string();
            assert!(!error.contains("pw@"), "{error}");
            assert!(error.contains("expected http://"), "{error}");
        }
    }
}
