//! `GET /v1/seed`: a state-only seed of this node's chain, signed by this node, as a download
//! (exported into a scratch file, streamed, and gone from the disk once open).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::catalog::{params, RawQuery};
use super::error::ApiError;
use super::Api;

/// Bytes read from the scratch file at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// `GET /v1/seed`: the seed file (`SporeSystem::export_seed(path, false)`), one export at a time.
#[tracing::instrument(name = "http_seed", skip_all, fields(seq))]
pub(super) async fn seed(State(api): State<Api>, query: RawQuery) -> Result<Response, ApiError> {
    params(query, &[])?;
    let node = api.system.node_id()?;
    // Exports run one at a time; a second waits (within the seed timeout).
    let _turn =
        api.exports.acquire().await.map_err(|_| ApiError::Io(std::io::Error::other("the endpoint is stopping")))?;
    let scratch = api.options.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("spores-seed-").tempdir_in(&scratch).map_err(ApiError::Io)?;
    let path = dir.path().join("state.seed");
    let head = api.system.export_seed(&path, false).await?;
    tracing::Span::current().record("seq", head.seq);
    let file = tokio::fs::File::open(&path).await.map_err(ApiError::Io)?;
    let len = file.metadata().await.map_err(ApiError::Io)?.len();
    // The open file stays readable: nothing is left on the disk, whatever becomes of the download.
    drop(dir);
    let body = futures_util::stream::unfold(Some(file), |file| async move {
        let mut f = file?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    // Lowercase hex and digits only: nothing to quote in the header.
    let name = format!("attachment; filename=\"spores-{}-{}.seed\"", node.short(), head.seq);
    let disposition = HeaderValue::from_str(&name).map_err(|e| ApiError::Io(std::io::Error::other(e)))?;
    let file_len = HeaderValue::from(len);
    let file = file_headers(disposition, file_len);
    Ok((StatusCode::OK, file, Body::from_stream(body)).into_response())
}

/// The headers of a seed download.
fn file_headers(disposition: HeaderValue, len: HeaderValue) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CONTENT_LENGTH, len),
    ]
}
