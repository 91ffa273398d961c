//! A byte bound on every response body an API server sends, as a layer of the kube-rs client.
//!
//! kube-rs collects a list or get response whole before decoding it, and splits a watch
//! stream into lines with no length limit, so without this a remote API server (or anything
//! on the path to it) can make the daemon buffer any amount of memory before the store's own
//! caps ever see an object.
//!
//! Two bounds, chosen by the request:
//! - a watch (`watch=true`/`watch=1` in the query) lives for hours, so its total size is not
//!   the measure; each event is one line (the API server's watch encoding), and no line may
//!   exceed [`MAX_EVENT_BYTES`];
//! - every other response (a list page, a get, a patch) may not exceed the cluster's
//!   `sync.max_bytes_per_cluster`: one page can never legitimately hold more than the whole
//!   cluster may.
//!
//! Over a bound the body ends in a [`BodyTooLarge`] error: kube-rs fails the request, the
//! watcher backs off and retries, and the store keeps its last good snapshot (the cluster is
//! degraded, the reason is in its status). The client is built without gzip, so the bytes
//! counted are the bytes received.

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The longest watch event line accepted. kube-apiserver refuses request bodies over 3 MiB
/// (its `MaxRequestBodyBytes`) and etcd stores nothing over 1.5 MiB by default, so no object
/// a watch can carry is larger; the event envelope adds a few dozen bytes.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body went over its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyTooLarge {
    #[error("a watch event of over {limit} bytes (no API object is that large); refused")]
    Event { limit: usize },
    #[error("a response body of over {limit} bytes (sync.max_bytes_per_cluster); refused: raise sync.max_bytes_per_cluster if the cluster is really that large")]
    Body { limit: usize },
}

/// How one response is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// No line (run of bytes without `\n`) longer than this.
    Line(usize),
    /// No more bytes in total than this.
    Total(usize),
}

impl Bound {
    /// The bound of the response to a request for `query` (the URI's query string).
    pub fn for_query(query: Option<&str>, total: usize) -> Bound {
        let watch = query.is_some_and(|q| {
            q.split('&')
                .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
        });
        if watch {
            Bound::Line(MAX_EVENT_BYTES)
        } else {
            Bound::Total(total)
        }
    }
}

/// Counts bytes against a [`Bound`]; pure, so the rule is tested without a body.
#[derive(Debug, Clone)]
pub struct Meter {
    bound: Bound,
    /// Bytes of the current line ([`Bound::Line`]) or of the whole body ([`Bound::Total`]).
    seen: usize,
}

impl Meter {
    pub fn new(bound: Bound) -> Meter {
        Meter { bound, seen: 0 }
    }

    /// Accounts for the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BodyTooLarge> {
        match self.bound {
            Bound::Total(limit) => {
                self.seen = self.seen.saturating_add(chunk.len());
                if self.seen > limit {
                    return Err(BodyTooLarge::Body { limit });
                }
            }
            Bound::Line(limit) => {
                // The first piece continues the line the previous chunk ended in; the last
                // one is carried into the next chunk.
                let mut pieces = chunk.split(|b| *b == b'\n');
                let first = pieces.next().map_or(0, <[u8]>::len);
                let mut run = self.seen.saturating_add(first);
                let mut longest = run;
                for piece in pieces {
                    run = piece.len();
                    longest = longest.max(run);
                }
                self.seen = run;
                if longest > limit {
                    return Err(BodyTooLarge::Event { limit });
                }
            }
        }
        Ok(())
    }
}

/// A body that fails once its [`Meter`] does.
pub struct Bounded<B> {
    inner: B,
    meter: Meter,
    failed: bool,
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(e) = this.meter.feed(data.chunk()) {
                        this.failed = true;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The layer: `ClientBuilder::with_layer(&BodyLimitLayer::new(cap))`. `total` is read at
/// each request, so a reload that changes `sync.max_bytes_per_cluster` applies to the next one.
#[derive(Clone)]
pub struct BodyLimitLayer {
    total: Arc<AtomicUsize>,
}

impl BodyLimitLayer {
    pub fn new(total: Arc<AtomicUsize>) -> BodyLimitLayer {
        BodyLimitLayer { total }
    }
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            total: self.total.clone(),
        }
    }
}

pub struct BodyLimit<S> {
    inner: S,
    total: Arc<AtomicUsize>,
}

type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<Bounded<B>>, E>> + Send>>;

impl<S, ReqBody, B> tower::Service<Request<ReqBody>> for BodyLimit<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = Response<Bounded<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let bound = Bound::for_query(req.uri().query(), self.total.load(Ordering::Relaxed));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| Bounded {
                inner,
                meter: Meter::new(bound),
                failed: false,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn feed_all(bound: Bound, chunks: &[&[u8]]) -> Result<(), BodyTooLarge> {
        let mut m = Meter::new(bound);
        chunks.iter().try_for_each(|c| m.feed(c))
    }

    #[test]
    fn watch_requests_are_bounded_per_line_and_others_in_total() {
        for q in [
            "watch=true",
            "a=b&watch=1&c",
            "resourceVersion=5&watch=True",
        ] {
            assert_eq!(
                Bound::for_query(Some(q), 7),
                Bound::Line(MAX_EVENT_BYTES),
                "{q}"
            );
        }
        for q in [
            None,
            Some("limit=500"),
            Some("watch=false"),
            Some("xwatch=true"),
        ] {
            assert_eq!(Bound::for_query(q, 7), Bound::Total(7), "{q:?}");
        }
    }

    #[test]
    fn total_bound_counts_every_byte_across_chunks() {
        assert_eq!(feed_all(Bound::Total(10), &[b"12345", b"67890"]), Ok(()));
        assert_eq!(
            feed_all(Bound::Total(10), &[b"12345", b"6\n7\n8\n90x"]),
            Err(BodyTooLarge::Body { limit: 10 })
        );
    }

    #[test]
    fn line_bound_measures_each_line_across_chunk_edges() {
        let ok: &[&[u8]] = &[b"1234\n12", b"34\n1234", b"\n", b"1", b"2", b"34"];
        assert_eq!(feed_all(Bound::Line(4), ok), Ok(()));
        // A line split over three chunks.
        let split: &[&[u8]] = &[b"12\n123", b"4", b"5\n"];
        assert_eq!(
            feed_all(Bound::Line(4), split),
            Err(BodyTooLarge::Event { limit: 4 })
        );
        // A long line between two newlines of one chunk.
        assert_eq!(
            feed_all(Bound::Line(4), &[b"1\n12345\n1"]),
            Err(BodyTooLarge::Event { limit: 4 })
        );
        // Many short lines add up to far more than the bound.
        let many = b"123\n".repeat(1000);
        assert_eq!(feed_all(Bound::Line(4), &[&many]), Ok(()));
        assert_eq!(feed_all(Bound::Line(4), &[b"12", b"3\n", b"1234"]), Ok(()));
    }

    fn body_of(chunks: Vec<&'static [u8]>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn an_oversized_body_fails_with_the_reason_and_a_small_one_passes_whole() {
        let small = Bounded {
            inner: body_of(vec![b"{\"a\":", b"1}"]),
            meter: Meter::new(Bound::Total(8)),
            failed: false,
        };
        let got = small.collect().await.expect("within the bound");
        assert_eq!(got.to_bytes(), Bytes::from_static(b"{\"a\":1}"));

        let big = Bounded {
            inner: body_of(vec![b"{\"a\":", b"1234}"]),
            meter: Meter::new(Bound::Total(8)),
            failed: false,
        };
        let err = big.collect().await.expect_err("over the bound");
        let e = err
            .downcast_ref::<BodyTooLarge>()
            .expect("the error is ours");
        assert_eq!(*e, BodyTooLarge::Body { limit: 8 });
        assert!(e.to_string().contains("sync.max_bytes_per_cluster"), "{e}");
    }
}
