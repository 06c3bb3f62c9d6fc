//! Mock AI provider for the keygate benchmark: a minimal HTTP/1.1 keep-alive
//! server on one thread that answers every POST with the same OpenAI chat
//! completion and `GET /v1/models` with a model list. It reads (and discards)
//! request bodies, by content-length or chunked, and never logs per request.
//!
//! Usage: bench-upstream [PORT]   (0 or nothing = a free port)
//! Prints `listening 127.0.0.1:PORT` on stdout once bound.

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHAT: &str = r#"{"id":"chatcmpl-bench0000000000000000000000","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed answer from the keygate benchmark's mock upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":212,"completion_tokens":14,"total_tokens":226,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}"#;
const MODELS: &str = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"}]}"#;

fn response(body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: bench\r\n\r\n{}",
        body.len(),
        body
    );
    out
}

struct Head {
    header_len: usize,
    content_length: usize,
    chunked: bool,
    close: bool,
    models: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the request head at the start of `buf`, if complete.
fn parse_head(buf: &[u8]) -> Option<Result<Head, ()>> {
    let end = find(buf, b"\r\n\r\n")?;
    let text = match std::str::from_utf8(&buf[..end]) {
        Ok(t) => t,
        Err(_) => return Some(Err(())),
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let http10 = parts.next() == Some("HTTP/1.0");
    let mut head = Head {
        header_len: end + 4,
        content_length: 0,
        chunked: false,
        close: http10,
        models: method == "GET" && path.starts_with("/v1/models"),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => head.content_length = n,
                Err(_) => return Some(Err(())),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
    }
    Some(Ok(head))
}

/// Length of a complete chunked body at the start of `buf`, if complete.
fn chunked_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let mut pos = 0;
    loop {
        let line_end = pos + find(&buf[pos..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[pos..line_end]).ok();
        let size_text = size_text.map(|s| s.split(';').next().unwrap_or("").trim());
        let size = match size_text.and_then(|s| usize::from_str_radix(s, 16).ok()) {
            Some(n) => n,
            None => return Some(Err(())),
        };
        pos = line_end + 2;
        if size == 0 {
            // Trailers (usually none) end with an empty line.
            let trailer_end = pos + find(&buf[pos..], b"\r\n")?;
            if trailer_end == pos {
                return Some(Ok(pos + 2));
            }
            let all = find(&buf[pos..], b"\r\n\r\n")?;
            return Some(Ok(pos + all + 4));
        }
        if buf.len() < pos + size + 2 {
            return None;
        }
        pos += size + 2;
    }
}

async fn serve(mut sock: TcpStream, chat: &'static [u8], models: &'static [u8]) {
    let _ = sock.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        // Answer every complete request in the buffer (pipelining), then write once.
        let mut close = false;
        loop {
            let head = match parse_head(&buf) {
                None => break,
                Some(Err(())) => return,
                Some(Ok(h)) => h,
            };
            let total = if head.chunked {
                match chunked_len(&buf[head.header_len..]) {
                    None => break,
                    Some(Err(())) => return,
                    Some(Ok(n)) => head.header_len + n,
                }
            } else {
                head.header_len + head.content_length
            };
            if buf.len() < total {
                break;
            }
            buf.drain(..total);
            out.extend_from_slice(if head.models { models } else { chat });
            if head.close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = sock.shutdown().await;
            return;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let chat: &'static [u8] = Box::leak(response(CHAT).into_boxed_slice());
    let models: &'static [u8] = Box::leak(response(MODELS).into_boxed_slice());
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-upstream: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bench-upstream: bind: {e}");
                std::process::exit(1);
            }
        };
        if let Ok(addr) = listener.local_addr() {
            println!("listening {addr}");
            let _ = std::io::stdout().flush();
        }
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(serve(sock, chat, models));
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
    });
}
