//! Framed, mutually authenticated connections between levels.
//!
//! For: the TLS handshake with a timeout, learning who the peer is, and
//! moving whole [`Message`]s in and out of a byte stream. Not for: what the
//! messages mean, retries or reconnection (the managers do that).
//!
//! The byte layout belongs to [`agad_protocol::wire`]; this module only
//! reads a header, asks the codec whether to go on, and reads the body.

use crate::tls::{PeerIdentity, peer_identity, server_name};
use agad_protocol::text::{EXCERPT, excerpt};
use agad_protocol::wire::{
    CodecError, HEADER_LEN, History, MAX_FRAME_LEN, Message, Sender, decode_body_after,
    decode_body_from, decode_header, encode_after,
};
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// Longest a TCP connect plus TLS handshake may take; a peer that stalls
/// must not hold a slot of the accept loop.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("bad frame: {0}")]
    Codec(#[from] CodecError),
    #[error("peer identity refused: {0}")]
    Identity(String),
    #[error("connection and TLS handshake did not finish within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
    #[error("a frame of {len} bytes did not arrive within {} s", .after.as_secs())]
    FrameTimeout { len: usize, after: Duration },
    #[error("the peer did not take {len} bytes within {} s", .after.as_secs())]
    SendTimeout { len: usize, after: Duration },
}

/// A frame body grows by at most this much per read (and by less while
/// little has arrived).
const READ_CHUNK: usize = 64 * 1024;

/// Once a frame's first byte is in, the whole frame must follow within
/// this, plus a second per [`FRAME_MIN_RATE`] bytes it announces: a peer
/// that trickles holds its connection for a bounded time, not forever,
/// while a replica over a slow link still arrives.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per second a frame is allowed to arrive at (64 KiB/s).
pub const FRAME_MIN_RATE: usize = 64 * 1024;

/// Receives whole messages from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// The body as received so far: it grows as bytes arrive, never to the
    /// announced length up front, so a peer that announces 32 MiB and
    /// trickles costs what it sent, not what it claimed.
    body: Vec<u8>,
    body_len: usize,
    body_filled: usize,
    /// Which end the frames come from, once known: kinds it may not send
    /// are refused before their body is decoded.
    from: Option<Sender>,
    /// Largest body accepted now (smaller before a peer is admitted).
    max_frame: usize,
    /// When the frame being read must be complete.
    deadline: Option<tokio::time::Instant>,
    /// The bodies read so far, which the next may refer back to.
    history: History,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            header: [0; HEADER_LEN],
            header_filled: 0,
            body: Vec::new(),
            body_len: 0,
            body_filled: 0,
            from: None,
            max_frame: MAX_FRAME_LEN,
            deadline: None,
            history: History::default(),
        }
    }

    /// Refuses bodies longer than `max` (at most the protocol's cap) from
    /// now on: a peer not admitted yet has no business sending more than a
    /// hello.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max.min(MAX_FRAME_LEN);
    }

    /// From now on, frames come from `from` (a manager reading its child
    /// says `Sender::Child`, a child reading its manager `Sender::Parent`);
    /// a kind that end may not send fails [`FrameReader::recv`] with
    /// [`CodecError::Forbidden`] before its body is decoded.
    pub fn set_sender(&mut self, from: Sender) {
        self.from = Some(from);
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between
    /// frames. After an error the stream is out of step: drop it.
    ///
    /// Cancel-safe: progress lives in `self`, so `recv` can race a shutdown
    /// or a timer in `select!` without losing half a frame.
    pub async fn recv(&mut self) -> Result<Option<Message>, NetError> {
        while self.header_filled < HEADER_LEN {
            let n = read(
                &mut self.inner,
                &mut self.header[self.header_filled..],
                self.deadline,
                0,
            )
            .await?;
            if n == 0 {
                return match self.header_filled {
                    0 => Ok(None),
                    _ => Err(truncated()),
                };
            }
            if self.header_filled == 0 {
                self.deadline = Some(tokio::time::Instant::now() + FRAME_TIMEOUT);
            }
            self.header_filled += n;
            if self.header_filled == HEADER_LEN {
                // Version and size are checked before anything is read.
                self.body_len = decode_header(&self.header)?;
                if self.body_len > self.max_frame {
                    return Err(CodecError::TooLarge {
                        len: self.body_len,
                        max: self.max_frame,
                    }
                    .into());
                }
                self.deadline = self.deadline.map(|d| d + allowance(self.body_len));
            }
        }
        while self.body_filled < self.body_len {
            // Grows with what arrived (doubling, from 4 KiB to 64 KiB a step).
            let step = self.body_filled.clamp(4096, READ_CHUNK);
            let end = self.body_filled + (self.body_len - self.body_filled).min(step);
            if self.body.len() < end {
                self.body.resize(end, 0);
            }
            let n = read(
                &mut self.inner,
                &mut self.body[self.body_filled..end],
                self.deadline,
                self.body_len,
            )
            .await?;
            if n == 0 {
                return Err(truncated());
            }
            self.body_filled += n;
        }
        self.header_filled = 0;
        self.body_filled = 0;
        self.deadline = None;
        let mut body = std::mem::take(&mut self.body);
        body.truncate(self.body_len);
        Ok(Some(match self.from {
            Some(from) => decode_body_from(&body, from, &mut self.history)?,
            None => decode_body_after(&body, &mut self.history)?,
        }))
    }
}

/// Resolves at `due`, never if there is none.
pub(crate) async fn sleep_until_some(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The time a frame of `len` bytes gets beyond [`FRAME_TIMEOUT`].
fn allowance(len: usize) -> Duration {
    Duration::from_secs((len / FRAME_MIN_RATE) as u64)
}

/// One read, failing with [`NetError::FrameTimeout`] past `deadline`.
async fn read<R: AsyncRead + Unpin>(
    inner: &mut R,
    buf: &mut [u8],
    deadline: Option<tokio::time::Instant>,
    len: usize,
) -> Result<usize, NetError> {
    let Some(deadline) = deadline else {
        return Ok(inner.read(buf).await?);
    };
    match tokio::time::timeout_at(deadline, inner.read(buf)).await {
        Ok(read) => Ok(read?),
        Err(_) => Err(NetError::FrameTimeout {
            len,
            after: FRAME_TIMEOUT + allowance(len),
        }),
    }
}

fn truncated() -> NetError {
    NetError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "peer closed the connection in the middle of a frame",
    ))
}

/// Sends whole messages to a byte stream.
pub struct FrameWriter<W> {
    inner: W,
    /// The bodies written so far, which the next may refer back to.
    history: History,
}

/// A frame waiting for a child's writer.
#[derive(Debug, Clone)]
// Nearly every queued frame is a message: boxing them would cost an
// allocation each to save the few shared frames some bytes.
#[allow(clippy::large_enum_variant)]
pub enum Outgoing {
    Message(Message),
    /// A whole frame (header and body, [`agad_protocol::wire::encode`]),
    /// encoded once and shared by every child it goes to: a domain's
    /// deployment to thousands of nodes is one buffer, not one each.
    Encoded(Arc<[u8]>),
    /// A message in no hurry: it waits for the next frame to the same
    /// peer and leaves in the same write (one record, one segment, one
    /// acknowledgement), for at most as long as the writer allows (an
    /// attestation challenge rides on the next acknowledgement of reports).
    WithNext(Message),
}

impl From<Message> for Outgoing {
    fn from(message: Message) -> Outgoing {
        Outgoing::Message(message)
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            history: History::default(),
        }
    }

    /// Writes one frame and flushes it: alarms must not wait in a buffer.
    /// Not cancel-safe: a `send` dropped midway leaves half a frame behind,
    /// after which the connection must be dropped.
    pub async fn send(&mut self, message: &Message) -> Result<(), NetError> {
        self.inner
            .write_all(&encode_after(message, &mut self.history)?)
            .await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Writes several frames with one write: one TLS record and usually one
    /// TCP segment instead of one each (the report batch of a window).
    pub async fn send_all(&mut self, messages: &[Message]) -> Result<(), NetError> {
        let mut bytes = Vec::new();
        for message in messages {
            bytes.extend_from_slice(&encode_after(message, &mut self.history)?);
        }
        self.inner.write_all(&bytes).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Writes queued frames in order: messages encoded here, frames encoded
    /// once for many receivers ([`Outgoing::Encoded`]) written from their
    /// shared bytes, without a copy per receiver. Small frames between
    /// large ones still leave together.
    ///
    /// The peer must take them as a reader would have them arrive: within
    /// [`FRAME_TIMEOUT`] and a second per [`FRAME_MIN_RATE`] bytes. A peer
    /// that stops reading while it keeps talking would otherwise hold this
    /// writer, and a place in a deployment's wave, for ever.
    pub async fn send_outgoing(&mut self, frames: &[Outgoing]) -> Result<(), NetError> {
        // Messages encoded and gathered between the shared frames.
        let mut pieces: Vec<std::borrow::Cow<'_, [u8]>> = Vec::new();
        let mut bytes = Vec::new();
        for frame in frames {
            match frame {
                Outgoing::Message(message) | Outgoing::WithNext(message) => {
                    bytes.extend_from_slice(&encode_after(message, &mut self.history)?)
                }
                Outgoing::Encoded(shared) => {
                    if !bytes.is_empty() {
                        pieces.push(std::mem::take(&mut bytes).into());
                    }
                    pieces.push(shared[..].into());
                }
            }
        }
        if !bytes.is_empty() {
            pieces.push(bytes.into());
        }
        let len = pieces.iter().map(|p| p.len()).sum();
        let after = FRAME_TIMEOUT + allowance(len);
        let write = async {
            for piece in &pieces {
                self.inner.write_all(piece).await?;
            }
            self.inner.flush().await
        };
        tokio::time::timeout(after, write)
            .await
            .map_err(|_| NetError::SendTimeout { len, after })??;
        Ok(())
    }

    /// Closes the sending direction (TLS `close_notify`); the peer's
    /// [`FrameReader::recv`] then returns `Ok(None)`.
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        Ok(self.inner.shutdown().await?)
    }
}

pub type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
pub type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

/// An authenticated link, from either end.
pub struct Connection {
    pub peer: PeerIdentity,
    /// Where the peer connects from (for logs; identity is the certificate).
    pub address: Option<std::net::SocketAddr>,
    pub reader: Reader,
    pub writer: Writer,
    /// The kernel's send queue of the socket under `writer`.
    pub send_queue: SendQueue,
}

/// How much of what was written on a socket its peer has not acknowledged
/// yet: a write returns once the bytes are in the kernel's send buffer,
/// which holds megabytes, so only this says when they have left.
#[derive(Debug, Clone, Copy)]
pub struct SendQueue(std::os::fd::RawFd);

impl SendQueue {
    /// Bytes written and not yet acknowledged by the peer; `None` if the
    /// kernel does not say. Only meaningful while the socket is open: ask
    /// from a task that holds its [`Writer`].
    pub fn unacknowledged(&self) -> Option<usize> {
        let mut bytes: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one c_int through the pointer, which
        // points to one; the fd belongs to a socket kept open by the
        // caller's writer (at worst a closed fd makes the ioctl fail).
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(self.0, libc::TIOCOUTQ, &mut bytes) };
        (rc == 0).then(|| usize::try_from(bytes).unwrap_or(0))
    }

    /// Has the kernel close the connection when what was written stays
    /// unacknowledged for longer than `after` (`TCP_USER_TIMEOUT`): a peer
    /// whose host is gone or cut off is found by the next frame written to
    /// it, without its having to answer that frame.
    pub fn give_up_unacknowledged_after(&self, after: Duration) -> std::io::Result<()> {
        let ms = libc::c_uint::try_from(after.as_millis()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: TCP_USER_TIMEOUT reads one c_uint through the pointer,
        // which points to one of the size given; the fd is a TCP socket
        // kept open by the caller (at worst a closed fd makes it fail).
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::setsockopt(
                self.0,
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Connection {
    fn new(stream: TlsStream<TcpStream>) -> Result<Connection, NetError> {
        let (_, session) = stream.get_ref();
        let cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| NetError::Identity("peer showed no certificate".to_string()))?;
        let peer = peer_identity(cert)?;
        let address = stream.get_ref().0.peer_addr().ok();
        let send_queue = SendQueue(std::os::fd::AsRawFd::as_raw_fd(stream.get_ref().0));
        tracing::debug!(peer = %peer.name, role = %peer.role, fingerprint = %peer.fingerprint, "TLS link up");
        let (reader, writer) = tokio::io::split(stream);
        Ok(Connection {
            peer,
            address,
            reader: FrameReader::new(reader),
            writer: FrameWriter::new(writer),
            send_queue,
        })
    }
}

/// Server side of a new TCP connection: handshake (client certificate
/// required) and the client's identity.
pub async fn accept(acceptor: &TlsAcceptor, tcp: TcpStream) -> Result<Connection, NetError> {
    tcp.set_nodelay(true)?;
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(handshake_failed)?;
    Connection::new(TlsStream::Server(tls))
}

/// A handshake error, told in a short line (it may quote what the peer sent).
fn handshake_failed(e: std::io::Error) -> NetError {
    NetError::Handshake(excerpt(&e.to_string(), EXCERPT))
}

/// Client side: TCP connect to `addr`, handshake, and the server's identity.
///
/// In TLS 1.3 the server judges the client's certificate after the client
/// has finished, so a server that refuses us shows up as an error on the
/// first `recv`, not here.
pub async fn connect(
    addr: impl ToSocketAddrs,
    config: Arc<ClientConfig>,
) -> Result<Connection, NetError> {
    let connector = TlsConnector::from(config);
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector
            .connect(server_name(), tcp)
            .await
            .map_err(handshake_failed)
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| NetError::Timeout)??;
    Connection::new(TlsStream::Client(tls))
}

/// Reads frames on their own task: a frame half-read must never be dropped
/// by a `select!` that picked another branch.
pub fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: FrameReader<R>,
) -> tokio::sync::mpsc::Receiver<Result<Message, NetError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // When the receiver goes (session over, deadline passed), the
            // reader goes too, and with it the socket: a peer that never
            // finishes a frame must not keep its connection forever.
            let read = tokio::select! {
                read = reader.recv() => read,
                () = tx.closed() => return,
            };
            let item = match read {
                Ok(Some(m)) => Ok(m),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::wire::{Control, MAX_FRAME_LEN, MessageKind, PROTOCOL_VERSION, encode};

    fn ack(seq: u64) -> Message {
        Message::Control(Control::Ack { seqs: vec![seq] })
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_given_up_on() {
        // Its end of the pipe is kept open and never read: the write waits.
        let (ours, _theirs) = tokio::io::duplex(4096);
        let mut writer = FrameWriter::new(ours);
        let frame: Arc<[u8]> = vec![0u8; 1 << 20].into();
        let err = writer
            .send_outgoing(&[Outgoing::Encoded(frame), ack(1).into()])
            .await
            .unwrap_err();
        let NetError::SendTimeout { len, after } = err else {
            panic!("{err}")
        };
        assert!(len > 1 << 20, "{len}");
        assert_eq!(after, FRAME_TIMEOUT + Duration::from_secs(16));
    }

    #[tokio::test]
    async fn the_send_queue_holds_what_the_peer_has_not_acknowledged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let queue = SendQueue(std::os::fd::AsRawFd::as_raw_fd(&client));
        assert_eq!(queue.unacknowledged(), Some(0));

        // The peer reads nothing: once its receive window is closed, what
        // is written waits in the sender's queue, unacknowledged.
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0;
        loop {
            match client.try_write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let waiting = queue.unacknowledged().unwrap();
        assert!(waiting > 0 && waiting <= written, "{waiting} of {written}");

        // Once the peer has read it all, nothing is left.
        let mut read = vec![0u8; written];
        server.read_exact(&mut read).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while queue.unacknowledged() != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                queue.unacknowledged()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn header(len: u32, version: u16) -> Vec<u8> {
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&version.to_be_bytes());
        h
    }

    #[tokio::test]
    async fn messages_cross_a_stream_and_eof_between_frames_is_clean() {
        let (a, b) = tokio::io::duplex(64);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b);
        let sending = tokio::spawn(async move {
            for seq in 0..3 {
                writer.send(&ack(seq)).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        });
        for seq in 0..3 {
            assert_eq!(reader.recv().await.unwrap(), Some(ack(seq)));
        }
        assert_eq!(reader.recv().await.unwrap(), None);
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_without_reading_its_body() {
        let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
        let mut bytes = header(len, PROTOCOL_VERSION);
        bytes.extend_from_slice(b"body that must stay unread");
        let mut reader = FrameReader::new(bytes.as_slice());
        let err = reader.recv().await.unwrap_err();
        assert!(
            matches!(err, NetError::Codec(CodecError::TooLarge { .. })),
            "{err}"
        );
        assert!(reader.body.is_empty());
        assert_eq!(reader.inner, b"body that must stay unread");
    }

    #[tokio::test]
    async fn a_huge_announced_frame_costs_only_what_was_sent() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(b);
        let len = u32::try_from(MAX_FRAME_LEN).unwrap();
        a.write_all(&header(len, PROTOCOL_VERSION)).await.unwrap();
        a.write_all(&[1u8; 100]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(50), reader.recv()).await;
        assert!(pending.is_err(), "an unfinished frame must not complete");
        assert!(
            reader.body.capacity() <= 8 * 1024,
            "{} bytes held for 100 received",
            reader.body.capacity()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_fails_at_its_deadline_but_idle_between_frames_is_fine() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(b);
        // Nothing sent: no frame has begun, so no deadline (liveness, not
        // the reader, judges a silent peer).
        let idle = tokio::time::timeout(Duration::from_secs(3600), reader.recv()).await;
        assert!(idle.is_err(), "an idle link must not fail: {idle:?}");
        // A frame of 1 MiB begun, then a trickle of a byte every 5 s.
        let len = 1024 * 1024;
        a.write_all(&header(len as u32, PROTOCOL_VERSION))
            .await
            .unwrap();
        let trickle = tokio::spawn(async move {
            loop {
                if a.write_all(&[1]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let err = reader.recv().await.unwrap_err();
        let allowed = FRAME_TIMEOUT + Duration::from_secs((len / FRAME_MIN_RATE) as u64);
        assert!(
            matches!(err, NetError::FrameTimeout { len: l, after } if l == len && after == allowed),
            "{err}"
        );
        assert!(started.elapsed() <= allowed, "{:?}", started.elapsed());
        trickle.abort();
    }

    #[tokio::test]
    async fn a_peer_not_admitted_may_not_announce_more_than_a_hello() {
        let mut bytes = header(100_000, PROTOCOL_VERSION);
        bytes.extend_from_slice(b"unread");
        let mut reader = FrameReader::new(bytes.as_slice());
        reader.set_max_frame(64 * 1024);
        let err = reader.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Codec(CodecError::TooLarge {
                    len: 100_000,
                    max: 65_536
                })
            ),
            "{err}"
        );
        assert_eq!(reader.inner, b"unread");
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused() {
        let frame = encode(&ack(1)).unwrap();
        let mut bytes = header(
            u32::try_from(frame.len() - HEADER_LEN).unwrap(),
            PROTOCOL_VERSION + 1,
        );
        bytes.extend_from_slice(&frame[HEADER_LEN..]);
        let err = FrameReader::new(bytes.as_slice()).recv().await.unwrap_err();
        assert!(
            matches!(err, NetError::Codec(CodecError::Version { .. })),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_garbage_body_is_refused() {
        let mut bytes = header(5, PROTOCOL_VERSION);
        bytes.extend_from_slice(&[0xff; 5]);
        let err = FrameReader::new(bytes.as_slice()).recv().await.unwrap_err();
        assert!(
            matches!(err, NetError::Codec(CodecError::Malformed(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let frame = encode(&ack(1)).unwrap();
        for cut in [3, HEADER_LEN + 1] {
            let err = FrameReader::new(&frame[..cut]).recv().await.unwrap_err();
            assert!(
                matches!(err, NetError::Io(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn recv_survives_being_cancelled_mid_frame() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(b);
        let frame = encode(&ack(7)).unwrap();
        a.write_all(&frame[..HEADER_LEN + 1]).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(50), reader.recv()).await;
        assert!(early.is_err(), "a partial frame must not complete");
        a.write_all(&frame[HEADER_LEN + 1..]).await.unwrap();
        assert_eq!(reader.recv().await.unwrap(), Some(ack(7)));
    }

    #[tokio::test]
    async fn a_reader_told_its_sender_refuses_what_that_end_may_not_send() {
        let assign = Message::Control(Control::AssignDomain {
            domain: "lab".into(),
            generation: 1,
        });
        let reports = Message::Reports(vec![]);
        // A manager reading its child: acks pass, orders do not.
        let mut bytes = encode(&ack(1)).unwrap();
        bytes.extend(encode(&assign).unwrap());
        let mut from_child = FrameReader::new(bytes.as_slice());
        from_child.set_sender(Sender::Child);
        assert_eq!(from_child.recv().await.unwrap(), Some(ack(1)));
        let err = from_child.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Codec(CodecError::Forbidden {
                    kind: MessageKind::AssignDomain,
                    from: Sender::Child
                })
            ),
            "{err}"
        );
        // A child reading its manager: orders pass, reports do not.
        let mut bytes = encode(&assign).unwrap();
        bytes.extend(encode(&reports).unwrap());
        let mut from_parent = FrameReader::new(bytes.as_slice());
        from_parent.set_sender(Sender::Parent);
        assert_eq!(from_parent.recv().await.unwrap(), Some(assign));
        let err = from_parent.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Codec(CodecError::Forbidden {
                    kind: MessageKind::Reports,
                    from: Sender::Parent
                })
            ),
            "{err}"
        );
        // Not told: anything well formed passes.
        let mut bytes = encode(&reports).unwrap();
        bytes.extend(encode(&ack(2)).unwrap());
        let mut unknown = FrameReader::new(bytes.as_slice());
        assert_eq!(unknown.recv().await.unwrap(), Some(reports));
        assert_eq!(unknown.recv().await.unwrap(), Some(ack(2)));
    }
}
