//! The typed values of [`super::Config`]: parsed once at load, so no caller re-checks a URL or
//! compares a log format as a string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An absolute `http://` or `https://` URL with a host and no query, fragment or credentials,
/// held without a trailing `/` so `format!("{url}/path")` is right.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    https: bool,
}

impl HttpUrl {
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        const RULE: &str = "must be an http:// or https:// URL such as https://stagely.example.com";
        let trimmed = s.trim();
        let url = url::Url::parse(trimmed).map_err(|e| format!("{RULE} ({e})"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("{RULE} (not {other}://)")),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{RULE} (no host)"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{RULE} (no ?query or #fragment)"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{RULE} (no user:password@)"));
        }
        let text = url.as_str().trim_end_matches('/').to_owned();
        Ok(HttpUrl { text, https })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_https(&self) -> bool {
        self.https
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HttpUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The URL users and agents reach the appliance at: set in config, or derived from `listen`
/// (written as `""`) and fixed up once the port is bound.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicUrl {
    url: HttpUrl,
    derived: bool,
}

impl PublicUrl {
    pub fn set(url: HttpUrl) -> PublicUrl {
        PublicUrl { url, derived: false }
    }

    pub fn derived_from(listen: std::net::SocketAddr) -> PublicUrl {
        PublicUrl {
            url: HttpUrl {
                text: format!("http://{listen}"),
                https: false,
            },
            derived: true,
        }
    }

    pub fn is_derived(&self) -> bool {
        self.derived
    }

    pub fn url(&self) -> &HttpUrl {
        &self.url
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.url, f)
    }
}

impl Serialize for PublicUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.derived { "" } else { self.url.as_str() })
    }
}

impl<'de> Deserialize<'de> for PublicUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            // Derived from `listen` in `Config::finish`, once every layer is in.
            return Ok(PublicUrl::derived_from(super::DEFAULT_LISTEN));
        }
        HttpUrl::parse(&s)
            .map(PublicUrl::set)
            .map_err(serde::de::Error::custom)
    }
}

/// How the appliance writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(serde::de::Error::custom(
                "log_format: allowed values are \"text\" and \"json\"",
            )),
        }
    }
}

/// One entry of `trusted_proxies`: a CIDR block (`10.0.0.0/8`, `fd00::/8`) or a plain address
/// (one host). Written back in CIDR form. Held as an [`ipnet::IpNet`] (already in the build
/// through hyper-util, and well kept): its prefix arithmetic is what we would otherwise write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(ip)));
        }
        s.parse::<ipnet::IpNet>()
            .map(|n| Cidr(n.trunc()))
            .map_err(|_| format!("{s:?} is not an address or a CIDR block such as 10.0.0.0/8 or fd00::/8"))
    }

    /// One host.
    pub fn host(ip: std::net::IpAddr) -> Cidr {
        Cidr(ipnet::IpNet::from(ip))
    }

    /// True when `ip` is inside this block. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as
    /// a dual-stack listener sees IPv4 peers) counts as its IPv4 address.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which header a trusted proxy names the client in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy1, …` (Caddy and nginx set this one).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl<'de> Deserialize<'de> for ClientAddressHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ClientAddressHeader::XForwardedFor),
            "forwarded" => Ok(ClientAddressHeader::Forwarded),
            _ => Err(serde::de::Error::custom(
                "client_address_header: allowed values are \"x-forwarded-for\" and \"forwarded\"",
            )),
        }
    }
}

/// A secret read from config: never printed by `Debug`, never serialized, wiped on drop.
#[derive(Clone, Default, Deserialize, zeroize::ZeroizeOnDrop)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> SecretString {
        SecretString(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "[redacted]" })
    }
}

/// Serialized only to build the table of defaults, where it is empty: never writes the value.
impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_cidr_blocks_or_plain_addresses() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = Cidr::parse(" 10.1.2.3/8 ").unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.200.0.1")) && !net.contains(ip("11.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.0.0.9")),
            "IPv4-mapped peers count as IPv4"
        );
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        for bad in ["", "proxy.local", "10.0.0.0/33", "10.0.0.1/", "1.2.3"] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_parsed_once_and_held_without_a_trailing_slash() {
        let u = HttpUrl::parse(" https://Deploy.Example.com/ ").unwrap();
        assert_eq!(u.as_str(), "https://deploy.example.com");
        assert!(u.is_https());
        assert_eq!(
            HttpUrl::parse("http://h:9/api/v3/").unwrap().as_str(),
            "http://h:9/api/v3"
        );
        for bad in [
            "",
            "ftp://x",
            "deploy.example.com",
            "https://",
            "https://u:p@h",
            "https://h/?a=1",
            "https://h/#x",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?}");
        }
    }
}
