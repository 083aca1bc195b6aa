//! A minimal keep-alive HTTP/1.1 client on hyper (one connection per benchmark client).

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One keep-alive connection.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    /// Connects to `authority` (`host:port`).
    pub async fn connect(authority: &str) -> anyhow::Result<Client> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Client {
            sender,
            host: authority.to_string(),
        })
    }

    /// Sends a request and returns the body of a 2xx response (error otherwise).
    pub async fn send(&mut self, method: &str, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        self.send_as(method, path, body, None).await
    }

    /// Like [`Client::send`], acting for `user` (`X-Mnemo-User`) when given.
    pub async fn send_as(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        user: Option<&str>,
    ) -> anyhow::Result<Bytes> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(u) = user {
            req = req.header("x-mnemo-user", u);
        }
        let req = req.body(Full::new(body))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}
