//! Where hosted and mirrored files live: a directory in the data dir (the default), or a bucket on
//! S3-compatible storage (`milkglass serve --asset-store s3://bucket/prefix`) for servers whose
//! disk should not hold raw data. Either way a project's files sit under its id, are written whole
//! or not at all, and reach browsers only through signed URLs checked in `signer.rs`.

use crate::{ErrorKind, ServiceError, ServiceResult};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Parts of a multipart upload to the bucket: S3's minimum part size, so a large upload streams
/// through in bounded memory.
const PART_BYTES: usize = 5 << 20;

pub enum HostedStore {
    /// `DATA_DIR/assets/<project id>/<key>`, staged in `DATA_DIR/assets/.staging`.
    Dir(PathBuf),
    /// `<prefix>/<project id>/<key>` in a bucket.
    Bucket { store: Arc<dyn ObjectStore>, prefix: ObjectPath, url: String },
}

impl HostedStore {
    /// The store `asset_store` names (`s3://bucket[/prefix]`, credentials, region and endpoint from
    /// the standard `AWS_*` variables), or the data directory's `assets/` when it is `None`.
    pub(crate) fn open(asset_store: Option<&str>, data_dir: &Path) -> Result<HostedStore, String> {
        let Some(url) = asset_store else {
            return Ok(HostedStore::Dir(data_dir.join("assets")));
        };
        let parsed = url::Url::parse(url).map_err(|e| format!("--asset-store {url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "s3" || parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("--asset-store {url:?}: give s3://BUCKET or s3://BUCKET/PREFIX"));
        }
        let store = AmazonS3Builder::from_env()
            .with_url(url)
            .build()
            .map_err(|e| format!("--asset-store {url:?}: {e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for S3-compatible storage, AWS_ENDPOINT_URL)"))?;
        let prefix = ObjectPath::from_url_path(parsed.path().trim_matches('/'))
            .map_err(|e| format!("--asset-store {url:?}: the prefix is not a usable path: {e}"))?;
        Ok(HostedStore::Bucket { store: Arc::new(store), prefix, url: url.to_string() })
    }

    /// Where the store is, for the start-up line and the logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            HostedStore::Dir(dir) => dir.display().to_string(),
            HostedStore::Bucket { url, .. } => url.clone(),
        }
    }

    fn dir(&self, project: i64) -> Option<PathBuf> {
        match self {
            HostedStore::Dir(root) => Some(root.join(project.to_string())),
            HostedStore::Bucket { .. } => None,
        }
    }

    /// Everything of one project in the bucket sits under this.
    fn project_prefix(prefix: &ObjectPath, project: i64) -> ObjectPath {
        prefix.parts().chain(std::iter::once(PathPart::from(project.to_string()))).collect()
    }

    /// The object of `key`; the key has passed `relative_path`, so it has no `..` or empty parts.
    fn object(prefix: &ObjectPath, project: i64, key: &Path) -> Result<ObjectPath, String> {
        let key = key.to_str().ok_or("the key is not UTF-8")?;
        let under = Self::project_prefix(prefix, project);
        let mut parts: Vec<PathPart> = under.parts().collect();
        for part in key.split('/') {
            parts.push(PathPart::parse(part).map_err(|e| e.to_string())?);
        }
        Ok(parts.into_iter().collect())
    }

    /// Whether `key` (a relative path, as `relative_path` makes it) holds a file.
    pub(crate) async fn exists(&self, project: i64, key: &Path) -> bool {
        match self {
            HostedStore::Dir(_) => {
                let file = self.dir(project).expect("dir store").join(key);
                tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file())
            }
            HostedStore::Bucket { store, prefix, .. } => match Self::object(prefix, project, key) {
                Ok(path) => store.head(&path).await.is_ok(),
                Err(_) => false,
            },
        }
    }

    pub(crate) async fn read(&self, project: i64, key: &Path) -> Result<Vec<u8>, String> {
        match self {
            HostedStore::Dir(_) => {
                let file = self.dir(project).expect("dir store").join(key);
                tokio::fs::read(&file).await.map_err(|e| e.to_string())
            }
            HostedStore::Bucket { store, prefix, .. } => {
                let path = Self::object(prefix, project, key)?;
                let result = store.get(&path).await.map_err(|e| e.to_string())?;
                Ok(result.bytes().await.map_err(|e| e.to_string())?.to_vec())
            }
        }
    }

    /// Streams `body` into `key`, so a reader never sees half a file and a failed upload leaves
    /// nothing behind: a staged file renamed into place, or a multipart upload completed only at
    /// the end (aborted otherwise).
    pub(crate) async fn write<E: std::fmt::Display>(
        &self,
        project: i64,
        key: &Path,
        body: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        limit: u64,
    ) -> ServiceResult<u64> {
        match self {
            HostedStore::Dir(root) => {
                write_file_atomically(root, &self.dir(project).expect("dir store").join(key), body, limit).await
            }
            HostedStore::Bucket { store, prefix, .. } => {
                let path = Self::object(prefix, project, key).map_err(|e| ServiceError::invalid("key", e))?;
                write_object(store.as_ref(), &path, body, limit).await
            }
        }
    }

    /// Where the file of `key` is, for an adapter to serve: a project directory to resolve the
    /// request path in (symlinks included), or a bucket object. "Not found" when there is none.
    pub(crate) async fn locate(&self, project: i64, key: &Path) -> ServiceResult<HostedFile> {
        let not_found = || ServiceError::not_found("no such file");
        match self {
            HostedStore::Dir(_) => Ok(HostedFile::InDir(self.dir(project).expect("dir store"))),
            HostedStore::Bucket { store, prefix, .. } => {
                let path = Self::object(prefix, project, key).map_err(|_| not_found())?;
                let meta = store.head(&path).await.map_err(|_| not_found())?;
                Ok(HostedFile::Object(BucketObject { store: store.clone(), meta }))
            }
        }
    }

    /// Removes every file of a project. Logged, not returned: the project is gone either way.
    pub(crate) async fn remove_project(&self, project: i64) {
        let result = match self {
            HostedStore::Dir(_) => match tokio::fs::remove_dir_all(self.dir(project).expect("dir store")).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other.map_err(|e| e.to_string()),
            },
            HostedStore::Bucket { store, prefix, .. } => {
                let under = Self::project_prefix(prefix, project);
                let listed = store.list(Some(&under)).map(|meta| meta.map(|m| m.location)).boxed();
                let failures: Vec<String> = store
                    .delete_stream(listed)
                    .filter_map(|result| async move { result.err().map(|e| e.to_string()) })
                    .collect()
                    .await;
                if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
            }
        };
        if let Err(e) = result {
            tracing::error!("cannot remove the files of deleted project {project} from {}: {e}", self.describe());
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(format!("asset store: {e}"))
}

/// The next chunk of an upload, counted into `written`; an error once the upload passes `limit`
/// or breaks off.
async fn next_within<E: std::fmt::Display>(
    body: &mut (impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin),
    written: &mut u64,
    limit: u64,
) -> ServiceResult<Option<bytes::Bytes>> {
    let Some(chunk) = body.next().await else { return Ok(None) };
    let chunk = chunk.map_err(|e| ServiceError::invalid("body", format!("the upload broke off: {e}")))?;
    *written += chunk.len() as u64;
    if *written > limit {
        return Err(ServiceError::new(
            ErrorKind::TooLarge,
            "too_large",
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(Some(chunk))
}

async fn write_file_atomically<E: std::fmt::Display>(
    root: &Path,
    target: &Path,
    mut body: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    limit: u64,
) -> ServiceResult<u64> {
    let staging = root.join(".staging");
    tokio::fs::create_dir_all(&staging).await.map_err(internal)?;
    let temp = staging.join(format!("{:016x}", rand::random::<u64>()));
    let mut file = tokio::fs::File::create(&temp).await.map_err(internal)?;
    let mut written = 0u64;
    let result: ServiceResult<()> = async {
        while let Some(chunk) = next_within(&mut body, &mut written, limit).await? {
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.sync_all().await.map_err(internal)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(internal)?;
        }
        tokio::fs::rename(&temp, target).await.map_err(internal)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result.map(|()| written)
}

async fn write_object<E: std::fmt::Display>(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    mut body: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    limit: u64,
) -> ServiceResult<u64> {
    let upload = store.put_multipart(path).await.map_err(internal)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut written = 0u64;
    let streamed: ServiceResult<()> = async {
        while let Some(chunk) = next_within(&mut body, &mut written, limit).await? {
            // Bounds the parts in flight, so a fast client cannot fill memory.
            writer.wait_for_capacity(2).await.map_err(internal)?;
            writer.write(&chunk);
        }
        Ok(())
    }
    .await;
    match streamed {
        Ok(()) => writer.finish().await.map(|_| written).map_err(internal),
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// Where a hosted file is, for an adapter to serve.
pub enum HostedFile {
    /// The project's directory; the adapter resolves the request path inside it.
    InDir(PathBuf),
    Object(BucketObject),
}

/// An object in the bucket: what an adapter needs to serve it with the same validators and
/// ranges as a local file.
pub struct BucketObject {
    store: Arc<dyn ObjectStore>,
    meta: object_store::ObjectMeta,
}

impl BucketObject {
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    pub fn modified(&self) -> chrono::DateTime<chrono::Utc> {
        self.meta.last_modified
    }

    /// A strong validator, quoted as HTTP writes it.
    pub fn etag(&self) -> String {
        match &self.meta.e_tag {
            Some(tag) if tag.starts_with('"') => tag.clone(),
            Some(tag) => format!("\"{tag}\""),
            None => format!("\"{:x}-{:x}\"", self.meta.size, self.meta.last_modified.timestamp()),
        }
    }

    /// `len` bytes from `start`, or `None` when the object can no longer be read (or has changed
    /// since it was looked up: the bytes must be the ones the validators describe).
    pub async fn read(self, start: u64, len: u64) -> Option<BoxStream<'static, std::io::Result<bytes::Bytes>>> {
        if len == 0 {
            return Some(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            if_match: self.meta.e_tag.clone(),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&self.meta.location, options).await.ok()?;
        Some(result.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed())
    }
}
