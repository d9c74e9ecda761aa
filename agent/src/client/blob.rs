//! Downloading one blob into an ingest file, resuming with `Range`.
//!
//! An attempt asks for `bytes=<offset>-` when the ingest file already holds `offset` bytes.
//! A `206` must start exactly there; a `200` (the server ignored the range) or a `416` (the
//! partial file is no prefix of what it has) sends the download back to zero. The ingest
//! file's verifier refuses any byte beyond the expected size before it is written.

use http::header::{CONTENT_RANGE, RANGE};
use http::{HeaderValue, StatusCode};
use meshanics_shared::Repository;
use tracing::debug;

use super::connection::Connector;
use super::facades::Journey;
use super::{Client, refuse_declared_length, transfer};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::Ingest;

// === impl Client ===

impl Client {
    /// Downloads the rest of `ingest`'s blob from `repository`, retrying and resuming, until
    /// the ingest file holds the expected size. The caller commits it (which checks the
    /// digest). Returns the bytes received.
    pub async fn fetch_blob(
        &self,
        repository: &Repository,
        ingest: &mut Ingest<'_>,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let path = format!("/v2/{repository}/blobs/{}", ingest.digest());
        let mut received = 0u64;
        let mut journey = Journey::default();
        let mut n = 0;
        loop {
            n += 1;
            // A download cut on one replica resumes on the next with `Range`: the ingest
            // file's offset is where any replica continues, the bytes being the same.
            let (index, facade) = self.facades.current();
            match self
                .blob_attempt(facade, &path, ingest, progress, &mut received)
                .await
            {
                Ok(()) => {
                    self.facades.succeeded(index);
                    return Ok(received);
                }
                Err(err) => {
                    debug!(%path, attempt = n, offset = ingest.offset(), error = %err, "blob download interrupted");
                    self.after_failure(&mut journey, index, &path, n, err)
                        .await?;
                }
            }
        }
    }

    async fn blob_attempt(
        &self,
        facade: &Connector,
        path: &str,
        ingest: &mut Ingest<'_>,
        progress: &dyn Progress,
        received: &mut u64,
    ) -> Result<()> {
        let offset = ingest.offset();
        let size = ingest.size();
        if offset == size {
            return Ok(());
        }
        let url = facade.url(path);
        let mut headers = Vec::new();
        if offset > 0 {
            let range =
                HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| Error::Url {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            headers.push((RANGE, range));
        }
        let response = self.get(facade, path, &headers).await?;
        match response.status() {
            StatusCode::OK => {
                if offset > 0 {
                    debug!(%url, "the server ignored Range; starting the blob over");
                    ingest.restart()?;
                    progress.restart(ingest.digest());
                }
            }
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_start);
                if start != Some(offset) {
                    ingest.restart()?;
                    progress.restart(ingest.digest());
                    return Err(Error::RangeRefused { url, offset });
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                ingest.restart()?;
                progress.restart(ingest.digest());
                return Err(Error::RangeRefused { url, offset });
            }
            status => {
                return Err(Error::Status {
                    url,
                    status: status.as_u16(),
                });
            }
        }
        refuse_declared_length(&url, &response, size - ingest.offset())?;
        let mut body = transfer::Body::new(response.into_body(), self, url.clone());
        while let Some(chunk) = body.next_chunk().await? {
            self.count(chunk.len());
            *received += chunk.len() as u64;
            if let Err(err) = ingest.write(&chunk) {
                // More bytes than the blob has: this server's content is wrong, and what was
                // written of it cannot be trusted as a prefix either.
                if matches!(err, Error::Verify { .. }) {
                    ingest.restart()?;
                }
                return Err(err);
            }
            progress.advance(ingest.digest(), chunk.len() as u64);
            self.throttle(chunk.len()).await;
        }
        if ingest.offset() < size {
            return Err(Error::ShortBody {
                url,
                received: ingest.offset(),
                expected: size,
            });
        }
        Ok(())
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::range_start;

    #[test]
    fn reads_the_start_of_a_content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/1"), Some(0));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
