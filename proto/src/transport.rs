//! How every gRPC client reaches a coordinator: the address, TLS, and the
//! shared token. The worker and the `gradsweep` CLI both build their channels
//! here, so the two cannot drift apart.
//!
//! The token travels as `authorization: Bearer <token>` metadata on every
//! call. TLS uses rustls (ring); the client trusts exactly the CA given to it
//! (a private CA or the server's own self-signed certificate), never the
//! system store, because a coordinator is normally a private service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Metadata key that carries the token.
pub const TOKEN_HEADER: &str = "authorization";

/// Environment variable a token may come from (the CLI flags name a file).
pub const TOKEN_ENV: &str = "GRADSWEEP_TOKEN";

/// Problems with connection settings, each naming the file or value.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A file could not be read.
    #[error("cannot read {what} `{path}`: {source}")]
    Read {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token is empty or not valid in a gRPC header.
    #[error("{origin}: the token {problem}")]
    BadToken {
        /// Where the token came from.
        origin: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The coordinator address is not a valid URL.
    #[error("invalid coordinator address `{0}`: {1}")]
    Address(String, String),
    /// The TLS settings were rejected.
    #[error("TLS settings for `{0}`: {1}")]
    Tls(String, String),
}

/// A shared secret, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Validates a token: non-empty after trimming, printable ASCII only.
    pub fn new(raw: &str, origin: &str) -> Result<Token, TransportError> {
        let t = raw.trim();
        if t.is_empty() {
            return Err(TransportError::BadToken { origin: origin.to_string(), problem: "is empty" });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TransportError::BadToken {
                origin: origin.to_string(),
                problem: "must be printable ASCII without spaces",
            });
        }
        Ok(Token(Arc::from(t)))
    }

    /// The token from `file` if given, else from `$GRADSWEEP_TOKEN` if set,
    /// else none.
    pub fn load(file: Option<&Path>) -> Result<Option<Token>, TransportError> {
        if let Some(path) = file {
            let raw = std::fs::read_to_string(path).map_err(|source| TransportError::Read {
                what: "token file",
                path: path.to_path_buf(),
                source,
            })?;
            return Token::new(&raw, &format!("token file `{}`", path.display())).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) => Token::new(&v, &format!("${TOKEN_ENV}")).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Whether `presented` (an `authorization` header value) carries this
    /// token. Runs in time independent of where the values differ.
    pub fn matches_header(&self, presented: &[u8]) -> bool {
        let Some(given) = presented.strip_prefix(b"Bearer ") else { return false };
        let want = self.0.as_bytes();
        if given.len() != want.len() {
            return false;
        }
        given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    fn header_value(&self) -> MetadataValue<tonic::metadata::Ascii> {
        // Validated printable ASCII in `new`, so this cannot fail.
        MetadataValue::try_from(format!("Bearer {}", self.0)).expect("token validated as printable ASCII")
    }
}

/// How a client reaches the coordinator.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// Sent on every call when set.
    pub token: Option<Token>,
    /// PEM of the CA (or self-signed certificate) to trust; enables TLS.
    pub tls_ca: Option<Vec<u8>>,
    /// Name to verify in the server's certificate (default: the URL's host).
    pub tls_domain: Option<String>,
}

impl ClientSecurity {
    /// Loads the token (file or `$GRADSWEEP_TOKEN`) and the CA file.
    pub fn load(
        token_file: Option<&Path>,
        tls_ca: Option<&Path>,
        tls_domain: Option<String>,
    ) -> Result<ClientSecurity, TransportError> {
        let tls_ca = match tls_ca {
            Some(p) => Some(std::fs::read(p).map_err(|source| TransportError::Read {
                what: "TLS CA certificate",
                path: p.to_path_buf(),
                source,
            })?),
            None => None,
        };
        Ok(ClientSecurity { token: Token::load(token_file)?, tls_ca, tls_domain })
    }

    /// `host:port` becomes `https://host:port` with TLS, `http://host:port`
    /// without; a full URL is kept as given.
    pub fn url(&self, addr: &str) -> String {
        if addr.contains("://") {
            addr.to_string()
        } else if self.tls_ca.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        }
    }

    /// An endpoint for `addr` with TLS applied and conservative timeouts.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TransportError> {
        let url = self.url(addr);
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| TransportError::Address(addr.to_string(), e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(10)))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(ca) = &self.tls_ca {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some(d) = &self.tls_domain {
                tls = tls.domain_name(d.clone());
            }
            ep = ep.tls_config(tls).map_err(|e| TransportError::Tls(url, e.to_string()))?;
        }
        Ok(ep)
    }

    /// Wraps a channel so that every call carries the token.
    pub fn authorize(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, TokenInterceptor(self.token.clone()))
    }
}

/// A channel whose calls carry the token.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

/// Adds the token to each outgoing call (does nothing without one).
#[derive(Clone, Debug)]
pub struct TokenInterceptor(Option<Token>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(TOKEN_HEADER, t.header_value());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matching_and_validation() {
        let t = Token::new("  s3cret-token\n", "test").unwrap();
        assert!(t.matches_header(b"Bearer s3cret-token"));
        assert!(!t.matches_header(b"Bearer s3cret-tokeN"));
        assert!(!t.matches_header(b"Bearer s3cret"));
        assert!(!t.matches_header(b"s3cret-token"));
        assert!(Token::new(" \n", "file x").unwrap_err().to_string().contains("file x: the token is empty"));
        assert!(Token::new("a b", "env").is_err());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn url_scheme_follows_tls() {
        let plain = ClientSecurity::default();
        assert_eq!(plain.url("h:1"), "http://h:1");
        let tls = ClientSecurity { tls_ca: Some(vec![]), ..Default::default() };
        assert_eq!(tls.url("h:1"), "https://h:1");
        assert_eq!(tls.url("http://h:1"), "http://h:1");
    }
}
