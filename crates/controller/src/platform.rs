//! Reads the catalog documents: from the platform API (`shared/platform-api.md`: paged,
//! bearer token, retries with backoff and jitter honouring `Retry-After`, 401/403 as a
//! configuration error) or from a catalog file holding the same documents.

use crate::catalog::{AppDoc, CatalogFile, Lenient, RawCatalog, RawTenant, TenantDoc};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde::Deserialize;
use service_kit::Secret;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("the platform refused the token (HTTP {status} on {path}): check platform.token_env / platform.token_file")]
    Unauthorized { status: u16, path: String },
    #[error("GET {path} failed after {attempts} attempts: {last}")]
    Exhausted { path: String, attempts: u32, last: String },
    #[error("GET {path} answered HTTP {status}: {body}")]
    Status { path: String, status: u16, body: String },
    #[error("GET {path} returned a body that is not a {what} page: {reason}")]
    Body { path: String, what: &'static str, reason: String },
    #[error("GET {path} returned a body over {limit} bytes, the limit platform.max_body_bytes")]
    TooLarge { path: String, limit: usize },
    #[error("GET {path} still had a next page after {limit} pages, the limit platform.max_pages")]
    TooManyPages { path: String, limit: usize },
    #[error("cannot read the platform token: {0}")]
    Token(String),
    #[error("cannot read catalog file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// How to reach the platform API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: String,
    pub token: TokenSource,
    pub page_size: u32,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Apps requests in flight at once.
    pub concurrency: usize,
    /// Bytes one page's body may have.
    pub max_body_bytes: usize,
    /// Pages one listing may have.
    pub max_pages: usize,
}

/// Where the bearer token comes from. Read at every sync, so a rotated secret file is
/// picked up without a restart.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Env { var: String, value: Option<Secret> },
    File(PathBuf),
}

impl TokenSource {
    fn read(&self) -> Result<Secret, PlatformError> {
        match self {
            TokenSource::Env { var, value } => match value {
                Some(v) if !v.is_empty() => Ok(v.clone()),
                _ => Err(PlatformError::Token(format!("environment variable {var} is not set or empty"))),
            },
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| PlatformError::Token(format!("{}: {e}", path.display())))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(PlatformError::Token(format!("{} is empty", path.display())));
                }
                Ok(Secret::new(token))
            }
        }
    }
}

#[derive(Deserialize)]
struct TenantsPage {
    #[serde(default)]
    tenants: Vec<Lenient<TenantDoc>>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct AppsPage {
    #[serde(default)]
    apps: Vec<Lenient<AppDoc>>,
    next_page_token: Option<String>,
}

/// A client of the platform API.
#[derive(Debug, Clone)]
pub struct PlatformClient {
    http: reqwest::Client,
    settings: ApiSettings,
}

impl PlatformClient {
    pub fn new(settings: ApiSettings) -> Result<Self, PlatformError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("scheduled-query-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PlatformError::Token(format!("cannot build the HTTP client: {e}")))?;
        Ok(PlatformClient { http, settings })
    }

    /// Fetches every active tenant and its apps. Any request that still fails after its
    /// retries fails the whole fetch, so a partial catalog never replaces a complete one.
    pub async fn fetch(&self) -> Result<RawCatalog, PlatformError> {
        let token = self.settings.token.read()?;
        let mut tenants = Vec::new();
        let mut page_token: Option<String> = None;
        for pages in 1.. {
            self.check_pages("/v1/tenants", pages)?;
            let page: TenantsPage = self.get_page("/v1/tenants", page_token.as_deref(), &token, "tenants").await?;
            tenants.extend(page.tenants);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => page_token = Some(next),
                None => break,
            }
        }
        let with_apps: Vec<RawTenant> = stream::iter(tenants)
            .map(|doc| {
                let token = token.clone();
                async move {
                    let apps = match &doc {
                        Lenient::Ok(TenantDoc { id: Some(id), status: Some(status), .. }) if status == "active" => {
                            self.fetch_apps(id, &token).await?
                        }
                        _ => Vec::new(),
                    };
                    Ok::<_, PlatformError>(RawTenant { doc, apps })
                }
            })
            .buffered(self.settings.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(RawCatalog { tenants: with_apps })
    }

    async fn fetch_apps(&self, tenant_id: &str, token: &Secret) -> Result<Vec<Lenient<AppDoc>>, PlatformError> {
        let path = format!("/v1/tenants/{}/apps", urlencode(tenant_id));
        let mut apps = Vec::new();
        let mut page_token: Option<String> = None;
        for pages in 1.. {
            self.check_pages(&path, pages)?;
            let page: AppsPage = self.get_page(&path, page_token.as_deref(), token, "apps").await?;
            apps.extend(page.apps);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => page_token = Some(next),
                None => break,
            }
        }
        Ok(apps)
    }

    /// `Err` when page number `page` of `path` is past `max_pages`.
    fn check_pages(&self, path: &str, page: usize) -> Result<(), PlatformError> {
        if page > self.settings.max_pages {
            return Err(PlatformError::TooManyPages { path: path.to_owned(), limit: self.settings.max_pages });
        }
        Ok(())
    }

    /// The body of `resp`, refused as soon as it is over `max_body_bytes` (by its
    /// `Content-Length`, or while it streams in).
    async fn body(&self, mut resp: reqwest::Response, path: &str) -> Result<Result<Vec<u8>, String>, PlatformError> {
        let limit = self.settings.max_body_bytes;
        let too_large = || PlatformError::TooLarge { path: path.to_owned(), limit };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(Ok(body)),
                Err(e) => return Ok(Err(format!("reading the body failed: {}", without_url(&e)))),
            }
        }
    }

    async fn get_page<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        page_token: Option<&str>,
        token: &Secret,
        what: &'static str,
    ) -> Result<T, PlatformError> {
        let url = format!("{}{}", self.settings.base_url.trim_end_matches('/'), path);
        let mut query = vec![("page_size", self.settings.page_size.to_string())];
        if let Some(t) = page_token {
            query.push(("page_token", t.to_owned()));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.http.get(&url).query(&query).bearer_auth(token.expose()).send().await;
            let (last, retry_after) = match sent {
                Ok(resp) if resp.status().is_success() => match self.body(resp, path).await? {
                    Ok(bytes) => {
                        return serde_json::from_slice(&bytes).map_err(|e| PlatformError::Body {
                            path: path.to_owned(),
                            what,
                            reason: e.to_string(),
                        });
                    }
                    Err(last) => (last, None),
                },
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(PlatformError::Unauthorized { status: status.as_u16(), path: path.to_owned() });
                    }
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, Utc::now()));
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        let body = resp.text().await.unwrap_or_default();
                        return Err(PlatformError::Status {
                            path: path.to_owned(),
                            status: status.as_u16(),
                            body: crate::catalog::shorten(&body),
                        });
                    }
                    (format!("HTTP {}", status.as_u16()), retry_after)
                }
                Err(e) => (without_url(&e), None),
            };
            if attempt >= self.settings.max_attempts {
                return Err(PlatformError::Exhausted { path: path.to_owned(), attempts: attempt, last });
            }
            let wait = retry_after.unwrap_or_else(|| {
                backoff_with_jitter(attempt, self.settings.initial_backoff, self.settings.max_backoff)
            });
            tracing::warn!(path, attempt, error = %last, wait_ms = wait.as_millis() as u64, "platform request failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The error text without the URL (the URL is logged as `path`; query strings may carry
/// page tokens).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    service_kit::with_sources(kind, e)
}

/// Exponential backoff with full jitter: uniformly in `[d/2, d]` where `d` doubles each
/// attempt from `initial` up to `max`.
pub fn backoff_with_jitter(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

/// `Retry-After` as seconds or an HTTP date, capped at 5 minutes.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(300);
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(CAP));
    }
    let when = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((when - now).to_std().unwrap_or(Duration::ZERO).min(CAP))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads a catalog file (JSON, or YAML by its `.yaml`/`.yml` extension): the tenants list,
/// each tenant carrying its apps inline. The file is decoded as a stream, item by item.
pub fn read_catalog_file(path: &Path) -> Result<RawCatalog, PlatformError> {
    let err = |reason: String| PlatformError::File { path: path.to_owned(), reason };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let catalog: Result<CatalogFile, String> = if yaml {
        // Items are decoded from their JSON text: YAML (hand-written, small) goes through JSON.
        serde_yaml_ng::from_reader::<_, serde_json::Value>(reader)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_str(&v.to_string()).map_err(|e| e.to_string()))
    } else {
        serde_json::from_reader(reader).map_err(|e| e.to_string())
    };
    crate::catalog::forget_texts();
    Ok(catalog.map_err(err)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z").expect("t").with_timezone(&Utc);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Fri, 04 Dec 2026 10:00:07 GMT", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Fri, 04 Dec 2026 09:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(Duration::from_secs(300)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..30 {
            let d = backoff_with_jitter(attempt, i, m);
            let cap = i.saturating_mul(1 << (attempt - 1).min(20)).min(m);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn a_catalog_file_keeps_each_tenants_apps() {
        let dir = std::env::temp_dir().join(format!("catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.yaml");
        std::fs::write(
            &path,
            "tenants:\n  - id: acme\n    status: active\n    apps:\n      - id: s\n        queries: []\n",
        )
        .expect("write");
        let raw = read_catalog_file(&path).expect("read");
        assert_eq!(raw.tenants.len(), 1);
        assert_eq!(raw.tenants[0].apps.len(), 1);
        assert!(matches!(&raw.tenants[0].doc, Lenient::Ok(d) if d.id.as_deref() == Some("acme")));
        let err = read_catalog_file(&dir.join("missing.json")).expect_err("missing");
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
