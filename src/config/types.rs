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
