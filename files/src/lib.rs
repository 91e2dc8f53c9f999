//! Where uploaded files live, and what can be learned from their bytes.
//!
//! [`FileStore`] puts objects in a directory under the data dir (the embedded default) or in
//! S3-compatible object storage (`s3://bucket?endpoint=…`), both through the `object_store`
//! crate, so the API above never knows which. Every write is streamed: a chunk at a time
//! goes on to the store as it arrives, counted against a size limit and a per-chunk
//! timeout, and at most a few parts are held in memory whatever the file's size.
//!
//! The bytes decide what a file is, never the client: [`sniff`] names the content type
//! from the first bytes, and [`thumbnail`] decodes an image under limits, so a
//! decompression bomb is refused before it is allocated.
//!
//! Which object holds what (file, thumbnail, the parts of a resumable upload) and who may
//! read it are the caller's business: this crate only stores bytes by key.

mod sniff;
mod thumbnail;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, GetOptions, GetRange, GetResultPayload, ObjectStore, RetryConfig, WriteMultipart};

pub use sniff::{sniff, SNIFF_BYTES};
pub use thumbnail::{thumbnail, Thumbnail, ThumbnailLimits};

/// The size of the parts a write is sent to the store in (S3's smallest part is 5 MiB).
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts of one write in flight at once: with the one being filled, a write holds at most
/// three parts (15 MiB) in memory.
const PARTS_IN_FLIGHT: usize = 2;
/// How much of a local file one read takes (and a download's chunk holds).
const FILE_READ_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL or its options cannot be used.
    #[error("files.store: {0}")]
    Config(String),
    /// The body went over `limit` bytes.
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The body stopped: the client went away, or sent nothing for the chunk timeout.
    #[error("the upload was cut: {0}")]
    Cut(String),
    /// Nothing arrived for the chunk timeout.
    #[error("nothing arrived for {0} s")]
    Stalled(u64),
    #[error("no such object")]
    NotFound,
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a write stored.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes stored.
    pub size: u64,
    /// The first [`SNIFF_BYTES`] bytes, for [`sniff`].
    pub head: Vec<u8>,
    /// Whether the body was cut (only with [`OnCut::Keep`]): what arrived is stored.
    pub cut: Option<String>,
}

/// What a write does when its body stops before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCut {
    /// Nothing is stored (a whole-file upload).
    Discard,
    /// What arrived is stored (a part of a resumable upload, which resumes from there).
    Keep,
}

/// The objects of every app, in a directory or a bucket. Cheap to clone.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
    describe: String,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl FileStore {
    /// Opens the store named by `url`:
    /// - empty: the directory `files` under `data_dir` (created if missing);
    /// - `file:///absolute/path`: that directory;
    /// - `s3://bucket[?endpoint=http://host:port&region=…&allow_http=true]`: an S3-compatible
    ///   store. Credentials come from the usual `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
    ///   variables, never from the URL (which is logged).
    pub fn open(url: &str, data_dir: &Path) -> Result<FileStore> {
        if url.is_empty() || url.starts_with("file://") {
            let dir = match url.strip_prefix("file://") {
                Some(path) if path.starts_with('/') => Path::new(path).to_path_buf(),
                Some(_) => return Err(Error::Config("a file:// URL needs an absolute path".into())),
                None => data_dir.join("files"),
            };
            std::fs::create_dir_all(&dir).map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
            let local = LocalFileSystem::new_with_prefix(&dir)?;
            return Ok(FileStore {
                inner: Arc::new(local),
                describe: format!("directory {}", dir.display()),
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(Error::Config(format!(
                "'{url}': use file:///path or s3://bucket?endpoint=…"
            )));
        };
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains('/') {
            return Err(Error::Config(format!("'{url}': name one bucket, s3://bucket")));
        }
        // Retries are bounded so a store that went away fails a request in seconds, not
        // minutes (object_store's default retries for up to three).
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
        };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            builder = match key {
                "endpoint" => builder.with_endpoint(value),
                "region" => builder.with_region(value),
                "allow_http" => builder.with_allow_http(value == "true"),
                "virtual_hosted_style" => builder.with_virtual_hosted_style_request(value == "true"),
                other => {
                    return Err(Error::Config(format!(
                        "unknown option '{other}' (endpoint, region, allow_http, virtual_hosted_style)"
                    )))
                }
            };
        }
        let s3 = builder.build().map_err(|e| Error::Config(e.to_string()))?;
        Ok(FileStore {
            inner: Arc::new(s3),
            describe: format!("S3 bucket {bucket}"),
        })
    }

    /// Checks the store answers (at start, so a wrong endpoint or key stops the start).
    pub async fn check(&self) -> Result<()> {
        let mut list = self.inner.list(Some(&ObjectPath::from("chatd-check")));
        match tokio::time::timeout(Duration::from_secs(20), list.next()).await {
            Ok(None | Some(Ok(_))) => Ok(()),
            Ok(Some(Err(e))) => Err(e.into()),
            Err(_) => Err(Error::Config("no answer within 20 s".into())),
        }
    }

    /// Streams `body` into the object `key`, refusing it past `limit` bytes and when no chunk
    /// arrives for `chunk_timeout`. The object appears only once complete; with
    /// [`OnCut::Keep`] a cut body still stores what arrived.
    pub async fn write<S, E>(
        &self,
        key: &str,
        body: S,
        limit: u64,
        chunk_timeout: Duration,
        on_cut: OnCut,
    ) -> Result<Written>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let upload = self.inner.put_multipart(&ObjectPath::from(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut size = 0u64;
        let mut head = Vec::new();
        let mut cut = None;
        let mut stalled = false;
        futures_util::pin_mut!(body);
        loop {
            let chunk = match tokio::time::timeout(chunk_timeout, body.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    cut = Some(e.to_string());
                    break;
                }
                Err(_) => {
                    cut = Some(format!("nothing arrived for {} s", chunk_timeout.as_secs()));
                    stalled = true;
                    break;
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                let _ = writer.abort().await;
                return Err(Error::TooLarge { limit });
            }
            if head.len() < SNIFF_BYTES {
                let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(e.into());
            }
            writer.put(chunk);
        }
        if let (Some(why), OnCut::Discard) = (&cut, on_cut) {
            let _ = writer.abort().await;
            return Err(if stalled {
                Error::Stalled(chunk_timeout.as_secs())
            } else {
                Error::Cut(why.clone())
            });
        }
        writer.finish().await?;
        Ok(Written { size, head, cut })
    }

    /// Writes `bytes` (small: a thumbnail) as the object `key`.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.inner.put(&ObjectPath::from(key), bytes.into()).await?;
        Ok(())
    }

    /// The bytes `range` of `key` (all of it with `None`), as a stream.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, std::result::Result<Bytes, std::io::Error>>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let found = self
            .inner
            .get_opts(&ObjectPath::from(key), options)
            .await
            .map_err(not_found)?;
        let range = found.range.clone();
        match found.payload {
            // object_store reads a local file 8 KiB at a time, each read a trip to a blocking
            // thread: a download from the directory store took a whole core at ~220 MB/s.
            GetResultPayload::File(file, _) => Ok(file_stream(file, range)),
            GetResultPayload::Stream(stream) => Ok(stream.map_err(std::io::Error::other).boxed()),
        }
    }

    /// The whole of `key`, if it is at most `max` bytes (else [`Error::TooLarge`]).
    pub async fn read_all(&self, key: &str, max: u64) -> Result<Bytes> {
        let path = ObjectPath::from(key);
        let meta = self.inner.head(&path).await.map_err(not_found)?;
        if meta.size > max {
            return Err(Error::TooLarge { limit: max });
        }
        Ok(self.inner.get(&path).await.map_err(not_found)?.bytes().await?)
    }

    /// Streams the objects `parts`, in order, into `key` (a resumable upload's parts into its
    /// file). The parts stay; delete them once the file is recorded.
    pub async fn concat(&self, parts: &[String], key: &str, chunk_timeout: Duration) -> Result<Written> {
        let mut streams = Vec::with_capacity(parts.len());
        for part in parts {
            streams.push(self.read(part, None).await?);
        }
        let body = futures_util::stream::iter(streams).flatten();
        self.write(key, body, u64::MAX, chunk_timeout, OnCut::Discard).await
    }

    /// Deletes `key`; a key that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The bytes `range` of a local file, read [`FILE_READ_BYTES`] at a time.
fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, std::result::Result<Bytes, std::io::Error>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let state = (tokio::fs::File::from_std(file), range.start, range.end, false);
    futures_util::stream::try_unfold(state, |(mut file, at, end, seeked)| async move {
        if at >= end {
            return Ok(None);
        }
        if !seeked {
            file.seek(std::io::SeekFrom::Start(at)).await?;
        }
        let want = (end - at).min(FILE_READ_BYTES as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended early",
                ));
            }
            filled += n;
        }
        Ok(Some((Bytes::from(buf), (file, at + want as u64, end, true))))
    })
    .boxed()
}

fn not_found(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound,
        e => Error::Store(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn writes_reads_ranges_and_refuses_past_the_limit() {
        let dir = tempdir();
        let store = FileStore::open("", &dir).unwrap();
        let t = Duration::from_secs(5);
        let w = store
            .write("a/1", chunks(&[b"hello ", b"world"]), 100, t, OnCut::Discard)
            .await
            .unwrap();
        assert_eq!((w.size, w.head.as_slice()), (11, b"hello world".as_slice()));
        let part: Vec<Bytes> = store
            .read("a/1", Some(6..11))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), b"world");
        let too_big = store
            .write("a/2", chunks(&[b"hello ", b"world"]), 8, t, OnCut::Discard)
            .await;
        assert!(matches!(too_big, Err(Error::TooLarge { limit: 8 })));
        assert!(
            matches!(store.read("a/2", None).await, Err(Error::NotFound)),
            "a refused write leaves nothing"
        );
        store.concat(&["a/1".into(), "a/1".into()], "a/3", t).await.unwrap();
        assert_eq!(
            store.read_all("a/3", 100).await.unwrap().as_ref(),
            b"hello worldhello world"
        );
        store.delete("a/3").await.unwrap();
        store.delete("a/3").await.unwrap();
        assert!(matches!(store.read("a/3", None).await, Err(Error::NotFound)));
    }

    #[tokio::test]
    async fn local_reads_span_many_chunks() {
        let dir = tempdir();
        let store = FileStore::open("", &dir).unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(data.clone()))]);
        store
            .write("big", body, u64::MAX, Duration::from_secs(5), OnCut::Discard)
            .await
            .unwrap();
        for range in [None, Some(100..600_000), Some(699_999..700_000)] {
            let got: Vec<Bytes> = store
                .read("big", range.clone())
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let (from, to) = range.map_or((0, data.len()), |r| (r.start as usize, r.end as usize));
            assert!(got.concat() == data[from..to], "{from}..{to}");
        }
    }

    #[tokio::test]
    async fn a_cut_body_keeps_what_arrived_only_when_asked() {
        let dir = tempdir();
        let store = FileStore::open("", &dir).unwrap();
        let t = Duration::from_secs(5);
        let cut = || {
            futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"abc")),
                Err(std::io::Error::other("connection reset")),
            ])
        };
        let kept = store.write("p/0", cut(), 100, t, OnCut::Keep).await.unwrap();
        assert_eq!(kept.size, 3);
        assert!(kept.cut.is_some());
        assert_eq!(store.read_all("p/0", 10).await.unwrap().as_ref(), b"abc");
        assert!(matches!(
            store.write("p/1", cut(), 100, t, OnCut::Discard).await,
            Err(Error::Cut(_))
        ));
        assert!(matches!(store.read("p/1", None).await, Err(Error::NotFound)));
    }

    #[test]
    fn store_urls_are_checked() {
        let dir = tempdir();
        assert!(FileStore::open("file://relative", &dir).is_err());
        assert!(FileStore::open("ftp://x", &dir).is_err());
        assert!(FileStore::open("s3://", &dir).is_err());
        assert!(FileStore::open("s3://b?colour=red", &dir).is_err());
        assert!(FileStore::open("s3://b?endpoint=http://127.0.0.1:1&region=x&allow_http=true", &dir).is_ok());
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("chat-files-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }
}
