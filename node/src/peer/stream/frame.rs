//! Frames on a peer stream: how messages are cut up, interleaved and put back together.
//!
//! A frame is a 13-byte header (payload length `u32`, message number `u64`, flags `u8`,
//! all big-endian) and up to `frame_bytes` of one message. The writer numbers messages
//! one by one; a message larger than a frame travels as several frames of its number, the
//! last one flagged [`LAST`]. A message starts with its id (`u64`): the call or append
//! session it belongs to, which many messages share. The writer takes one
//! frame from each queued message in turn, so a small message (a keepalive) waits behind
//! at most one frame of each larger one, never behind a whole large append.

use std::collections::{HashMap, VecDeque};
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// The flag of a message's last frame.
const LAST: u8 = 1;
const HEADER_BYTES: usize = 13;
/// The largest frame a reader accepts, whatever the sender's `cluster.peer_frame_bytes`
/// (the largest value that key allows).
pub(crate) const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// One whole message to send: its id, then its body, in one buffer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    id: u64,
    bytes: Vec<u8>,
}

impl Outgoing {
    /// `message` in its envelope, under `id`.
    pub(crate) fn encode<T: serde::Serialize>(
        id: u64,
        message: &T,
    ) -> Result<Self, crate::peer::envelope::EnvelopeError> {
        let bytes = crate::peer::envelope::encode_after(&id.to_be_bytes(), message)?;
        Ok(Outgoing { id, bytes })
    }

    #[cfg(test)]
    fn raw(id: u64, body: &[u8]) -> Self {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        Outgoing { id, bytes }
    }
}

/// Write every message `rx` yields, interleaved in frames of at most `frame_bytes`, until
/// `rx` closes (then flush and return) or a write fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    frame_bytes: usize,
) -> io::Result<()> {
    let frame_bytes = frame_bytes.max(1);
    let mut writer = BufWriter::new(writer);
    let mut lanes = Lanes::default();
    loop {
        if lanes.queue.is_empty() {
            writer.flush().await?;
            match rx.recv().await {
                Some(m) => lanes.push(m),
                None => return writer.shutdown().await,
            }
        }
        while let Ok(m) = rx.try_recv() {
            lanes.push(m);
        }
        let Some(mut lane) = lanes.queue.pop_front() else {
            continue;
        };
        let Some((number, bytes)) = lane.messages.front() else {
            continue;
        };
        let end = (lane.sent + frame_bytes).min(bytes.len());
        let last = end == bytes.len();
        let chunk = &bytes[lane.sent..end];
        let mut header = [0u8; HEADER_BYTES];
        header[..4].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
        header[4..12].copy_from_slice(&number.to_be_bytes());
        header[12] = if last { LAST } else { 0 };
        writer.write_all(&header).await?;
        writer.write_all(chunk).await?;
        lane.sent = end;
        if last {
            lane.messages.pop_front();
            lane.sent = 0;
        }
        if !lane.messages.is_empty() {
            lanes.queue.push_back(lane);
        }
    }
}

/// The messages waiting to be written, one lane per id: lanes take turns a frame at a
/// time, and within a lane (an append session) messages go whole, in order.
#[derive(Default)]
struct Lanes {
    queue: VecDeque<Lane>,
    /// The number of the last message queued.
    number: u64,
}

struct Lane {
    id: u64,
    /// (number, the id and then the body), oldest first.
    messages: VecDeque<(u64, Vec<u8>)>,
    /// How much of the first message is written.
    sent: usize,
}

impl Lanes {
    fn push(&mut self, m: Outgoing) {
        self.number += 1;
        let message = (self.number, m.bytes);
        match self.queue.iter_mut().find(|lane| lane.id == m.id) {
            Some(lane) => lane.messages.push_back(message),
            None => self.queue.push_back(Lane {
                id: m.id,
                messages: VecDeque::from([message]),
                sent: 0,
            }),
        }
    }
}

/// One whole message as read: its id, then its bytes.
#[derive(Debug, PartialEq)]
pub(crate) struct Message {
    /// The id, then the body, as they came.
    bytes: Vec<u8>,
}

impl Message {
    pub(crate) fn id(&self) -> u64 {
        u64::from_be_bytes(self.bytes[..8].try_into().expect("checked on read"))
    }

    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[8..]
    }
}

/// Reads frames and hands back whole messages.
pub(crate) struct Reader<R> {
    reader: R,
    partial: HashMap<u64, Vec<u8>>,
    /// The bytes of every message still partial, bounded by `max_message`.
    buffered: usize,
    max_message: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// `max_message`: the largest message accepted (the sum of its frames).
    pub(crate) fn new(reader: R, max_message: usize) -> Self {
        Reader {
            reader,
            partial: HashMap::new(),
            buffered: 0,
            max_message,
        }
    }

    /// The next whole message; `None` when the other side closed cleanly between frames.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            let mut header = [0u8; HEADER_BYTES];
            match self.reader.read_exact(&mut header[..1]).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            self.reader.read_exact(&mut header[1..]).await?;
            let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let id = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes"));
            let last = header[12] & LAST != 0;
            if len > MAX_FRAME_BYTES {
                return Err(invalid(format!(
                    "a peer frame of {len} bytes, over the limit of {MAX_FRAME_BYTES}"
                )));
            }
            if self.buffered + len > self.max_message {
                return Err(invalid(format!(
                    "peer messages over the limit of {} bytes",
                    self.max_message
                )));
            }
            self.buffered += len;
            let message = self.partial.entry(id).or_default();
            let start = message.len();
            message.resize(start + len, 0);
            self.reader.read_exact(&mut message[start..]).await?;
            if last {
                let bytes = self.partial.remove(&id).unwrap_or_default();
                self.buffered -= bytes.len();
                if bytes.len() < 8 {
                    return Err(invalid("a peer message without its id".into()));
                }
                return Ok(Some(Message { bytes }));
            }
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send_all(messages: Vec<Outgoing>, frame_bytes: usize) -> Vec<(u64, Vec<u8>)> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(16);
        for m in messages {
            tx.send(m).await.unwrap();
        }
        drop(tx);
        write_loop(client, rx, frame_bytes).await.unwrap();
        let mut reader = Reader::new(server, 1 << 20);
        let mut got = Vec::new();
        while let Some(m) = reader.next().await.unwrap() {
            got.push((m.id(), m.body().to_vec()));
        }
        got
    }

    #[tokio::test]
    async fn a_small_message_overtakes_a_large_one_sent_before_it() {
        let large = vec![7u8; 10_000];
        let got = send_all(
            vec![Outgoing::raw(1, &large), Outgoing::raw(2, b"keepalive")],
            1000,
        )
        .await;
        assert_eq!(got[0], (2, b"keepalive".to_vec()), "the small one first");
        assert_eq!(got[1], (1, large), "the large one whole");
    }

    #[tokio::test]
    async fn messages_that_share_an_id_arrive_whole_and_in_order() {
        // A long one, then short ones: within an id (an append session) none overtakes.
        let sizes = [5000usize, 10, 2500, 0];
        let messages = sizes
            .iter()
            .enumerate()
            .map(|(n, &size)| Outgoing::raw(9, &vec![n as u8; size]))
            .collect();
        let got = send_all(messages, 1000).await;
        assert_eq!(got.len(), sizes.len());
        for (n, (id, bytes)) in got.into_iter().enumerate() {
            assert_eq!((id, bytes), (9, vec![n as u8; sizes[n]]));
        }
    }

    #[tokio::test]
    async fn messages_of_any_size_arrive_whole_and_empty_ones_too() {
        let sizes = [0usize, 1, 999, 1000, 1001, 5000];
        let messages = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Outgoing::raw(i as u64, &(0..n).map(|b| b as u8).collect::<Vec<_>>()))
            .collect();
        let mut got = send_all(messages, 1000).await;
        got.sort();
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(got[i].0, i as u64);
            assert_eq!(got[i].1, (0..n).map(|b| b as u8).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn oversized_frames_and_messages_are_refused() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut header = [0u8; HEADER_BYTES];
        header[..4].copy_from_slice(&((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
        client.write_all(&header).await.unwrap();
        let err = Reader::new(server, usize::MAX).next().await.unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");

        let (client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(1);
        tx.send(Outgoing {
            id: 1,
            bytes: vec![0; 300],
        })
        .await
        .unwrap();
        drop(tx);
        write_loop(client, rx, 100).await.unwrap();
        let err = Reader::new(server, 250).next().await.unwrap_err();
        assert!(err.to_string().contains("limit of 250 bytes"), "{err}");

        // Many partial messages count together.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        for number in 1..=3u64 {
            let mut header = [0u8; HEADER_BYTES];
            header[..4].copy_from_slice(&100u32.to_be_bytes());
            header[4..12].copy_from_slice(&number.to_be_bytes());
            client.write_all(&header).await.unwrap();
            client.write_all(&[0u8; 100]).await.unwrap();
        }
        let err = Reader::new(server, 250).next().await.unwrap_err();
        assert!(err.to_string().contains("limit of 250 bytes"), "{err}");
    }
}
