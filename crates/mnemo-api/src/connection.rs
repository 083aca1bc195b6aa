//! Connection hygiene: a response sent before its request body was read to the end says
//! `Connection: close`.
//!
//! hyper closes such a connection once the response is written instead of reading the rest of
//! the body, but says nothing about it. A client that keeps the connection for its next request
//! (every pooled HTTP client does) then races the close and may see "server disconnected" on a
//! request the server never received. Announcing the close lets the client open a new
//! connection instead. Early answers happen on purpose: a body over its size limit (413), a
//! denied caller, an unknown route or method.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// Middleware: adds `Connection: close` to the response when the request had a body that was
/// not read to its end. Requests without a body pass through unchanged.
pub async fn close_when_body_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let tracked = ended.clone();
    let req = req.map(move |inner| {
        Body::new(Tracked {
            inner,
            ended: tracked,
        })
    });
    let mut response = next.run(req).await;
    if !ended.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to its end.
struct Tracked {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
