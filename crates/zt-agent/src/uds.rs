//! Workload API connections on the Unix socket.
//!
//! Each accepted connection carries the kernel's peer credentials, read once at
//! accept. Its bytes go through a small relay before the HTTP/2 server sees
//! them, because gRPC clients disagree on the `:authority` of a Unix socket:
//! Go and Rust send `localhost`, but gRPC's C core (Python, Ruby, C++) and Java
//! send the socket path, which is not a valid authority, and the HTTP/2 server
//! under tonic resets every such request with PROTOCOL_ERROR. The relay decodes
//! every header block the client sends (HPACK) and re-encodes it statelessly
//! (literals without indexing), with an invalid `:authority` replaced by
//! `localhost`. Re-encoding every block, not just the bad ones, keeps the
//! server's HPACK table in step: it stays empty. Everything else passes through
//! untouched, and the server-to-client direction is copied as is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixStream;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use crate::attest::PeerCredentials;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest frame relayed: the HTTP/2 default SETTINGS_MAX_FRAME_SIZE, which the
/// server does not raise. Larger frames end the connection.
const MAX_FRAME: usize = 16_384;
/// Largest header block, encoded or decoded: far beyond what a Workload API
/// call carries, and small enough that HPACK's indexing cannot blow it up.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Buffer between the relay and the HTTP/2 server.
const PIPE_BYTES: usize = 64 * 1024;

/// A Workload API connection, as the gRPC server sees it.
pub struct WorkloadConn {
    io: DuplexStream,
    peer: PeerCredentials,
}

impl WorkloadConn {
    /// Takes over an accepted socket; `None` if the kernel gives no credentials.
    /// `flushing` tracks the copy of the server's bytes to the client, so that a
    /// stopping agent can wait until its last words (a stream's final status)
    /// have left the process.
    pub fn accept(socket: UnixStream, flushing: &TaskTracker) -> Option<Self> {
        let cred = socket.peer_cred().ok()?;
        let peer = PeerCredentials {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
        let (io, server_side) = tokio::io::duplex(PIPE_BYTES);
        relay(socket, server_side, flushing);
        Some(Self { io, peer })
    }
}

impl Connected for WorkloadConn {
    type ConnectInfo = PeerCredentials;

    fn connect_info(&self) -> PeerCredentials {
        self.peer
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Copies client-to-server bytes through [`rewrite_headers`], and server-to-client
/// bytes as they are on a task of `flushing`; each direction ends when its
/// source closes.
fn relay(socket: UnixStream, server_side: DuplexStream, flushing: &TaskTracker) {
    let (mut from_client, mut to_client) = socket.into_split();
    let (mut from_server, mut to_server) = tokio::io::split(server_side);
    tokio::spawn(async move {
        if let Err(e) = rewrite_headers(&mut from_client, &mut to_server).await {
            tracing::debug!(error = %e, "Workload API connection closed");
        }
        let _ = to_server.shutdown().await;
    });
    flushing.spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
}

/// The client-to-server direction: the preface, then frame by frame. Public
/// for the fuzz target: these are the bytes any local process may send.
pub async fn rewrite_headers(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> io::Result<()> {
    let mut preface = [0u8; PREFACE.len()];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    if preface != *PREFACE {
        // Not HTTP/2: the server will say so.
        return Ok(());
    }
    let mut decoder = loona_hpack::Decoder::new();
    let mut pending: Option<PendingHeaders> = None;
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = head;
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        if len > MAX_FRAME {
            return Err(protocol_error(format!("a {len}-byte frame")));
        }
        let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;

        match (kind, pending.as_mut()) {
            (FRAME_HEADERS, None) => {
                let headers = PendingHeaders::start(stream, flags, &payload)?;
                if flags & FLAG_END_HEADERS != 0 {
                    to.write_all(&headers.reencode(&mut decoder)?).await?;
                } else {
                    pending = Some(headers);
                }
            }
            (FRAME_CONTINUATION, Some(headers)) if headers.stream == stream => {
                headers.block.extend_from_slice(&payload);
                if headers.block.len() > MAX_HEADER_BLOCK {
                    return Err(protocol_error("a header block over 64 KiB".into()));
                }
                if flags & FLAG_END_HEADERS != 0 {
                    let frames = headers.reencode(&mut decoder)?;
                    pending = None;
                    to.write_all(&frames).await?;
                }
            }
            (_, Some(_)) => return Err(protocol_error("a frame inside a header block".into())),
            (_, None) => {
                to.write_all(&head).await?;
                to.write_all(&payload).await?;
            }
        }
    }
}

/// A HEADERS frame and its CONTINUATIONs, being collected.
struct PendingHeaders {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl PendingHeaders {
    /// Strips padding and priority from a HEADERS payload (RFC 9113 §6.2).
    fn start(stream: u32, flags: u8, payload: &[u8]) -> io::Result<Self> {
        let bad = || protocol_error("a malformed HEADERS frame".into());
        let mut rest = payload;
        let mut pad = 0;
        if flags & FLAG_PADDED != 0 {
            let (&len, tail) = rest.split_first().ok_or_else(bad)?;
            pad = usize::from(len);
            rest = tail;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            let (head, tail) = rest.split_at_checked(5).ok_or_else(bad)?;
            priority = Some(<[u8; 5]>::try_from(head).map_err(|_| bad())?);
            rest = tail;
        }
        let block = rest
            .get(..rest.len().checked_sub(pad).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        Ok(Self {
            stream,
            flags,
            priority,
            block: block.to_vec(),
        })
    }

    /// Decodes the block and encodes it again without indexing, fixing `:authority`;
    /// returns the HEADERS (and CONTINUATION) frames to send.
    fn reencode(&self, decoder: &mut loona_hpack::Decoder<'_>) -> io::Result<Vec<u8>> {
        let mut block = Vec::with_capacity(self.block.len() + 64);
        let mut decoded = 0usize;
        let mut too_big = false;
        decoder
            .decode_with_cb(&self.block, |name, value| {
                decoded += name.len() + value.len();
                if decoded > MAX_HEADER_BLOCK {
                    too_big = true;
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !is_authority(&value) {
                    b"localhost"
                } else {
                    &value
                };
                encode_literal(&mut block, &name, value);
            })
            .map_err(|e| protocol_error(format!("an undecodable header block ({e:?})")))?;
        if too_big {
            return Err(protocol_error("a header list over 64 KiB".into()));
        }

        let mut frames = Vec::with_capacity(block.len() + 32);
        let priority = self.priority.map(|p| p.to_vec()).unwrap_or_default();
        let first_room = MAX_FRAME - priority.len();
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = self.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        write_frame(
            &mut frames,
            FRAME_HEADERS,
            flags,
            self.stream,
            &[&priority, first],
        );
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            write_frame(&mut frames, FRAME_CONTINUATION, flags, self.stream, &[chunk]);
        }
        Ok(frames)
    }
}

/// Whether the HTTP/2 server would accept `value` as an `:authority`.
fn is_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&len.to_be_bytes()[std::mem::size_of::<usize>() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// A literal header field without indexing, new name, no Huffman coding (RFC 7541 §6.2.2).
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        encode_integer(out, 0x00, 7, string.len());
        out.extend_from_slice(string);
    }
}

/// An HPACK integer with an `n`-bit prefix after `first`'s high bits (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 protocol error: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs client bytes through the relay's rewriting; returns what the server gets.
    async fn rewritten(client: &[u8]) -> io::Result<Vec<u8>> {
        let mut from = client;
        let mut to = Vec::new();
        rewrite_headers(&mut from, &mut to).await?;
        Ok(to)
    }

    fn headers_frame(flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, FRAME_HEADERS, flags, stream, &[payload]);
        out
    }

    /// Decodes every HEADERS+CONTINUATION block in `bytes` (after the preface).
    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let mut payload = &rest[9..9 + len];
            if kind == FRAME_HEADERS && flags & FLAG_PRIORITY != 0 {
                payload = &payload[5..];
            }
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_indexing_stays_consistent() {
        let mut encoder = loona_hpack::Encoder::new();
        let request = |authority: &'static [u8]| -> Vec<(&'static [u8], &'static [u8])> {
            vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
                (b":authority", authority),
                (b"workload.spiffe.io", b"true"),
            ]
        };
        let mut client = PREFACE.to_vec();
        // A SETTINGS frame passes through untouched.
        write_frame(&mut client, 0x4, 0, 0, &[&[0, 3, 0, 0, 0, 100]]);
        // Two requests from one stateful encoder: the second refers to table entries.
        let first = encoder.encode(request(b"tmp%2Fagent%2Fapi.sock"));
        client.extend(headers_frame(FLAG_END_HEADERS, 1, &first));
        let second = encoder.encode(request(b"tmp%2Fagent%2Fapi.sock"));
        // Padded and with a priority, split over a CONTINUATION.
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&second[..2]);
        payload.extend_from_slice(&[0, 0, 0]);
        client.extend(headers_frame(
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &payload,
        ));
        write_frame(
            &mut client,
            FRAME_CONTINUATION,
            FLAG_END_HEADERS,
            3,
            &[&second[2..]],
        );
        let valid = encoder.encode(request(b"localhost:8080"));
        client.extend(headers_frame(FLAG_END_HEADERS, 5, &valid));

        let server = rewritten(&client).await.unwrap();
        assert_eq!(
            &server[..PREFACE.len() + 15],
            &client[..PREFACE.len() + 15],
            "preface and SETTINGS as they were"
        );
        let blocks = decode_all(&server);
        assert_eq!(blocks.len(), 3);
        for (block, authority) in blocks
            .iter()
            .zip([&b"localhost"[..], b"localhost", b"localhost:8080"])
        {
            let find = |name: &[u8]| block.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
            assert_eq!(find(b":authority"), Some(authority));
            assert_eq!(find(b":path"), Some(&b"/SpiffeWorkloadAPI/FetchX509SVID"[..]));
            assert_eq!(find(b"workload.spiffe.io"), Some(&b"true"[..]));
        }
        // The second request kept END_STREAM and its priority, and dropped the padding.
        let second_frame = &server[PREFACE.len() + 15 + 9 + usize::from(server[PREFACE.len() + 15 + 2])..];
        assert_eq!(second_frame[3], FRAME_HEADERS);
        assert_eq!(
            second_frame[4],
            FLAG_END_STREAM | FLAG_PRIORITY | FLAG_END_HEADERS
        );
    }

    #[tokio::test]
    async fn malformed_and_oversized_input_ends_the_connection() {
        let with = |frames: &[u8]| [PREFACE.as_slice(), frames].concat();
        // A frame larger than the maximum frame size.
        let mut big = Vec::new();
        write_frame(&mut big, 0x0, 0, 1, &[&vec![0u8; MAX_FRAME + 1]]);
        assert!(rewritten(&with(&big)).await.is_err());
        // Padding longer than the frame.
        assert!(
            rewritten(&with(&headers_frame(
                FLAG_PADDED | FLAG_END_HEADERS,
                1,
                &[9, 0x82]
            )))
            .await
            .is_err()
        );
        // A DATA frame in the middle of a header block.
        let mut interleaved = headers_frame(0, 1, &[0x82]);
        write_frame(&mut interleaved, 0x0, 0, 1, &[b"x"]);
        assert!(rewritten(&with(&interleaved)).await.is_err());
        // A table index that does not exist.
        assert!(
            rewritten(&with(&headers_frame(FLAG_END_HEADERS, 1, &[0xff, 0x7f])))
                .await
                .is_err()
        );
        // An HPACK bomb: one 4000-byte entry, then indexed over and over.
        let mut bomb = vec![0x40, 0x01, b'a', 0x7f, 0xa1, 0x1e];
        bomb.extend(vec![b'b'; 4000]);
        bomb.extend(vec![0xbe; 3000]);
        let mut frames = Vec::new();
        write_frame(&mut frames, FRAME_HEADERS, FLAG_END_HEADERS, 1, &[&bomb]);
        let e = rewritten(&with(&frames)).await.unwrap_err();
        assert!(e.to_string().contains("header list over 64 KiB"), "{e}");
        // Not HTTP/2 at all: passed on for the server to refuse.
        assert_eq!(
            rewritten(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..24]
        );
    }

    #[test]
    fn integers_use_continuation_bytes_past_the_prefix() {
        let mut out = Vec::new();
        encode_integer(&mut out, 0, 7, 126);
        encode_integer(&mut out, 0, 7, 127);
        encode_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [126, 127, 0, 31, 0x9a, 0x0a]);
    }
}
