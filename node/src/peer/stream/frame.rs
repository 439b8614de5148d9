//! Frames on a peer stream: how messages are cut up, interleaved and put back together.
//!
//! A frame is a 13-byte header (payload length `u32`, message id `u64`, flags `u8`, all
//! big-endian) and up to `frame_bytes` of one message. A message larger than that travels
//! as several frames of the same id, the last one flagged [`LAST`]. The writer takes one
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

/// One whole message to send, under its id.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) bytes: Vec<u8>,
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
    // (id, bytes, how many are sent): messages in turn.
    let mut queue: VecDeque<(u64, Vec<u8>, usize)> = VecDeque::new();
    loop {
        if queue.is_empty() {
            writer.flush().await?;
            match rx.recv().await {
                Some(m) => queue.push_back((m.id, m.bytes, 0)),
                None => return writer.shutdown().await,
            }
        }
        while let Ok(m) = rx.try_recv() {
            queue.push_back((m.id, m.bytes, 0));
        }
        let Some((id, bytes, sent)) = queue.pop_front() else {
            continue;
        };
        let end = (sent + frame_bytes).min(bytes.len());
        let last = end == bytes.len();
        let chunk = &bytes[sent..end];
        let mut header = [0u8; HEADER_BYTES];
        header[..4].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
        header[4..12].copy_from_slice(&id.to_be_bytes());
        header[12] = if last { LAST } else { 0 };
        writer.write_all(&header).await?;
        writer.write_all(chunk).await?;
        if !last {
            queue.push_back((id, bytes, end));
        }
    }
}

/// Reads frames and hands back whole messages.
pub(crate) struct Reader<R> {
    reader: R,
    partial: HashMap<u64, Vec<u8>>,
    max_message: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// `max_message`: the largest message accepted (the sum of its frames).
    pub(crate) fn new(reader: R, max_message: usize) -> Self {
        Reader {
            reader,
            partial: HashMap::new(),
            max_message,
        }
    }

    /// The next whole message and its id; `None` when the other side closed cleanly
    /// between frames.
    pub(crate) async fn next(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
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
            let message = self.partial.entry(id).or_default();
            if message.len() + len > self.max_message {
                return Err(invalid(format!(
                    "a peer message over the limit of {} bytes",
                    self.max_message
                )));
            }
            let start = message.len();
            message.resize(start + len, 0);
            self.reader.read_exact(&mut message[start..]).await?;
            if last {
                let message = self.partial.remove(&id).unwrap_or_default();
                return Ok(Some((id, message)));
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
            got.push(m);
        }
        got
    }

    #[tokio::test]
    async fn a_small_message_overtakes_a_large_one_sent_before_it() {
        let large = vec![7u8; 10_000];
        let got = send_all(
            vec![
                Outgoing {
                    id: 1,
                    bytes: large.clone(),
                },
                Outgoing {
                    id: 2,
                    bytes: b"keepalive".to_vec(),
                },
            ],
            1000,
        )
        .await;
        assert_eq!(got[0], (2, b"keepalive".to_vec()), "the small one first");
        assert_eq!(got[1], (1, large), "the large one whole");
    }

    #[tokio::test]
    async fn messages_of_any_size_arrive_whole_and_empty_ones_too() {
        let sizes = [0usize, 1, 999, 1000, 1001, 5000];
        let messages = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Outgoing {
                id: i as u64,
                bytes: (0..n).map(|b| b as u8).collect(),
            })
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
    }
}
