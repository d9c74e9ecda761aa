//! `GET /meta/<file>`: the signed update metadata files, served read-only from one folder
//! (the files backend) or from memory (the PostgreSQL backend, see [`crate::publish`]).
//!
//! The name was already reduced to a published metadata file name (`N.root.cose`,
//! `N.targets.cose`, `timestamp.cose`) by [`MetaName`]; here a file of the folder must
//! also be a regular file (not a symlink, not a folder) no larger than the cap, and the file
//! that is opened must be the one that was checked. There is no listing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Response};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::body::{Body, BodyError};
use crate::error::Error;
use crate::publish::Metadata;
use crate::respond;
use crate::routes::MetaName;

/// Serves `name` from the published `metadata` (no folder configured and nothing in memory:
/// nothing is found).
pub async fn serve(
    metadata: &Metadata,
    name: &MetaName,
    method: &Method,
    limit: u64,
) -> Result<Response<Body>, Error> {
    let not_found = || Error::MetaNotFound {
        name: name.as_str().to_owned(),
    };
    if let Some(file) = metadata.in_memory(name) {
        let bytes = file.ok_or_else(not_found)?;
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        return Ok(answer(size, method, || respond::full(bytes)));
    }
    serve_file(metadata.dir(), name, method, limit, not_found).await
}

async fn serve_file(
    dir: Option<&Path>,
    name: &MetaName,
    method: &Method,
    limit: u64,
    not_found: impl Fn() -> Error,
) -> Result<Response<Body>, Error> {
    let dir = dir.ok_or_else(&not_found)?;
    let path = dir.join(name.as_str());
    let checked = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|_| not_found())?;
    if !checked.file_type().is_file() {
        return Err(not_found());
    }
    let io_err = |source| Error::MetaIo {
        path: path.clone(),
        source,
    };
    let file = tokio::fs::File::open(&path).await.map_err(io_err)?;
    let opened = file.metadata().await.map_err(io_err)?;
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        // Replaced between the check and the open: serve nothing rather than something else.
        return Err(not_found());
    }
    let size = opened.len();
    if size > limit {
        return Err(Error::MetaTooLarge { path, size, limit });
    }
    Ok(answer(size, method, move || {
        // `take` keeps a file that grows while it is read within the announced length.
        let stream = ReaderStream::new(file.take(size));
        let frames = futures_util::StreamExt::map(stream, |chunk| {
            chunk
                .map(http_body::Frame::data)
                .map_err(|e| -> BodyError { Box::new(e) })
        });
        StreamBody::new(frames).boxed_unsync()
    }))
}

/// The answer for a file of `size` bytes whose body `body` makes (not called for a HEAD).
fn answer(size: u64, method: &Method, body: impl FnOnce() -> Body) -> Response<Body> {
    let body = if method == Method::HEAD {
        respond::full(Bytes::new())
    } else {
        body()
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(dir: &Path, name: &str) -> Result<Vec<u8>, Error> {
        let name = MetaName::parse(name).unwrap();
        let response = serve_file(Some(dir), &name, &Method::GET, 1024, || {
            Error::MetaNotFound {
                name: name.as_str().to_owned(),
            }
        })
        .await?;
        Ok(response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec())
    }

    #[tokio::test]
    async fn serves_regular_files_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("timestamp.cose"), b"signed").unwrap();
        assert_eq!(get(dir.path(), "timestamp.cose").await.unwrap(), b"signed");
    }

    #[tokio::test]
    async fn refuses_folders_symlinks_missing_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let link = dir.path().join("1.root.cose");
        std::os::unix::fs::symlink(outside.path().join("secret"), link).unwrap();
        std::fs::create_dir(dir.path().join("2.root.cose")).unwrap();
        std::fs::write(dir.path().join("1.targets.cose"), vec![0u8; 2048]).unwrap();
        for name in ["1.root.cose", "2.root.cose", "3.root.cose"] {
            assert!(
                matches!(get(dir.path(), name).await, Err(Error::MetaNotFound { .. })),
                "{name}"
            );
        }
        assert!(matches!(
            get(dir.path(), "1.targets.cose").await,
            Err(Error::MetaTooLarge { size: 2048, .. })
        ));
    }

    #[tokio::test]
    async fn serves_nothing_without_a_metadata_folder() {
        let name = MetaName::parse("1.root.cose").unwrap();
        let not_found = || Error::MetaNotFound { name: "x".into() };
        assert!(matches!(
            serve_file(None, &name, &Method::GET, 1024, not_found).await,
            Err(Error::MetaNotFound { .. })
        ));
    }
}
