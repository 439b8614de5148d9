//! [`PeerStream`]: this node's end of the stream to one peer.
//!
//! Two tasks run per stream: the writer ([`frame::write_loop`]) and the reader, which
//! hands each reply to the call or append session waiting for it. When either ends (the
//! peer closed, a write failed, a frame did not decode, or the link was cut by the fault
//! switch) the stream is closed: calls in flight fail, sessions end with an error, and
//! the next call opens a new stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold_raft::typ::TypeConfig;
use openraft::error::Fatal;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::frame::{self, Outgoing, Reader};
use super::{StreamReply, StreamRequest, OUTGOING_QUEUE};
use crate::peer::client::PeerCallError;
use crate::peer::envelope::{self, PeerReply, PeerRequest};
use crate::peer::faults::Faults;
use crate::peer::server::MAX_PEER_BODY_BYTES;

/// What an append session hears from the reader.
pub(crate) enum SessionEvent {
    Result(Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>),
    /// The stream closed under the session: `cut` when by the fault switch.
    Broken {
        why: String,
        cut: bool,
    },
}

#[derive(Default)]
struct Waiting {
    calls: HashMap<u64, oneshot::Sender<PeerReply>>,
    sessions: HashMap<u64, mpsc::UnboundedSender<SessionEvent>>,
    /// Why the stream closed, once it has.
    closed: Option<(String, bool)>,
}

/// The stream to one peer.
pub(crate) struct PeerStream {
    addr: String,
    tx: mpsc::Sender<Outgoing>,
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
    faults: Arc<Faults>,
    /// Cancelled when the stream closes: stops the reader and the writer.
    cancel: CancellationToken,
}

impl PeerStream {
    /// Run the stream over `io` (a connection already switched to the peer protocol).
    pub(crate) fn start<IO>(
        addr: &str,
        io: IO,
        frame_bytes: usize,
        faults: Arc<Faults>,
    ) -> Arc<Self>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let stream = Arc::new(PeerStream {
            addr: addr.to_string(),
            tx,
            waiting: Mutex::new(Waiting::default()),
            next_id: AtomicU64::new(1),
            faults,
            cancel: CancellationToken::new(),
        });
        // Both tasks in the span of whoever opened the stream (the node's).
        let writer = stream.clone();
        tokio::spawn(
            async move {
                let result = tokio::select! {
                    r = frame::write_loop(write, rx, frame_bytes) => r.err().map(|e| e.to_string()),
                    _ = writer.cancel.cancelled() => None,
                };
                writer.close(result.unwrap_or_else(|| "closed".into()), false);
            }
            .in_current_span(),
        );
        let reader = stream.clone();
        tokio::spawn(
            async move {
                let why = tokio::select! {
                    why = reader.read_loop(Reader::new(read, MAX_PEER_BODY_BYTES)) => why,
                    _ = reader.cancel.cancelled() => "closed".into(),
                };
                reader.close(why, false);
            }
            .in_current_span(),
        );
        stream
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Close the stream: every call in flight fails and every session ends with `why`.
    pub(crate) fn close(&self, why: String, cut: bool) {
        let waiting = {
            let mut waiting = self.lock();
            if waiting.closed.is_some() {
                return;
            }
            waiting.closed = Some((why.clone(), cut));
            let calls = std::mem::take(&mut waiting.calls);
            (calls, std::mem::take(&mut waiting.sessions))
        };
        self.cancel.cancel();
        // Dropping the calls' senders fails every call in flight.
        let (_calls, sessions) = waiting;
        for session in sessions.into_values() {
            let _ = session.send(SessionEvent::Broken {
                why: why.clone(),
                cut,
            });
        }
        tracing::debug!(peer = %self.addr, %why, "peer stream closed");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read_loop<R: AsyncRead + Unpin>(&self, mut reader: Reader<R>) -> String {
        loop {
            let message = match reader.next().await {
                Ok(Some(message)) => message,
                Ok(None) => return "the peer closed the stream".into(),
                Err(e) => return format!("reading the peer stream: {e}"),
            };
            if self.faults.is_blocked(&self.addr) {
                self.close(
                    format!("link to {} is cut (fault injection)", self.addr),
                    true,
                );
                return "cut".into();
            }
            let id = message.id();
            let reply: StreamReply = match envelope::decode(message.body()) {
                Ok(reply) => reply,
                Err(e) => return format!("a message on the peer stream: {e}"),
            };
            let mut waiting = self.lock();
            match reply {
                StreamReply::Call(reply) => {
                    if let Some(call) = waiting.calls.remove(&id) {
                        let _ = call.send(reply);
                    }
                }
                StreamReply::Append(result) => {
                    if let Some(session) = waiting.sessions.get(&id) {
                        let _ = session.send(SessionEvent::Result(result));
                    }
                }
                StreamReply::AppendEnd => {
                    waiting.sessions.remove(&id);
                }
            }
        }
    }

    /// Queue `request` under `id`; an error means it was not sent.
    async fn send(&self, id: u64, request: &StreamRequest) -> Result<(), PeerCallError> {
        if self.faults.is_blocked(&self.addr) {
            self.close(
                format!("link to {} is cut (fault injection)", self.addr),
                true,
            );
            return Err(PeerCallError::Cut(self.addr.clone()));
        }
        let message = Outgoing::encode(id, request).map_err(|source| PeerCallError::Envelope {
            addr: self.addr.clone(),
            source,
        })?;
        self.tx
            .send(message)
            .await
            .map_err(|_| PeerCallError::Closed {
                addr: self.addr.clone(),
            })
    }

    /// Send `request` and wait at most `timeout` for its reply.
    pub(crate) async fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, PeerCallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut waiting = self.lock();
            if waiting.closed.is_some() {
                return Err(PeerCallError::Closed {
                    addr: self.addr.clone(),
                });
            }
            waiting.calls.insert(id, reply_tx);
        }
        // The deadline covers the wait for room in the writer's queue too (a stalled
        // connection fills it).
        let exchange = async {
            self.send(id, &StreamRequest::Call(request)).await?;
            reply_rx.await.map_err(|_| PeerCallError::Broken {
                addr: self.addr.clone(),
                why: self.why_closed(),
            })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(PeerCallError::Timeout {
                addr: self.addr.clone(),
            }),
        };
        if result.is_err() {
            self.lock().calls.remove(&id);
        }
        result
    }

    fn why_closed(&self) -> String {
        match &self.lock().closed {
            Some((why, _)) => why.clone(),
            None => "the stream closed".into(),
        }
    }

    /// Start an append session: `input`'s requests are sent as they come; the session
    /// yields the peer's results in order. `ttl`: how long a sent request may wait for
    /// its result before the session ends with a timeout.
    pub(crate) fn append_session<S>(
        self: &Arc<Self>,
        mut input: S,
        ttl: Duration,
    ) -> Result<AppendSession, PeerCallError>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        use futures::StreamExt;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        {
            let mut waiting = self.lock();
            if waiting.closed.is_some() {
                return Err(PeerCallError::Closed {
                    addr: self.addr.clone(),
                });
            }
            waiting.sessions.insert(id, events_tx);
        }
        let sent = Arc::new(Mutex::new(VecDeque::new()));
        let stream = self.clone();
        let sent_at = sent.clone();
        let pump = tokio::spawn(async move {
            while let Some(request) = input.next().await {
                sent_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(Instant::now());
                if stream
                    .send(id, &StreamRequest::Append(request))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = stream.send(id, &StreamRequest::EndAppend).await;
        });
        Ok(AppendSession {
            stream: self.clone(),
            id,
            events,
            sent,
            ttl,
            pump,
            done: false,
        })
    }

    /// The session is over on this side: forget it and tell the peer.
    fn end_session(self: &Arc<Self>, id: u64) {
        if self.lock().sessions.remove(&id).is_none() {
            return;
        }
        let stream = self.clone();
        tokio::spawn(async move {
            let _ = stream.send(id, &StreamRequest::EndAppend).await;
        });
    }
}

/// One `stream_append` in progress. Dropping it stops sending and ends the session.
pub(crate) struct AppendSession {
    stream: Arc<PeerStream>,
    id: u64,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    /// When each request still waiting for its result was sent, oldest first.
    sent: Arc<Mutex<VecDeque<Instant>>>,
    ttl: Duration,
    pump: tokio::task::JoinHandle<()>,
    done: bool,
}

/// What a session yields: the peer's result, or why the session broke.
pub(crate) enum SessionItem {
    Result(StreamAppendResult<TypeConfig>),
    Fatal(Fatal<TypeConfig>),
    Broken { why: String, cut: bool },
}

impl AppendSession {
    /// The next result, in the order the requests were sent; `None` once the session is
    /// over.
    pub(crate) async fn next(&mut self) -> Option<SessionItem> {
        if self.done {
            return None;
        }
        let tick = (self.ttl / 4).max(Duration::from_millis(1));
        loop {
            let event = match tokio::time::timeout(tick, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return None,
                Err(_) => {
                    let oldest = self
                        .sent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .front()
                        .copied();
                    match oldest {
                        Some(at) if at.elapsed() > self.ttl => {
                            self.done = true;
                            let why = format!(
                                "no answer from {} within {:?}",
                                self.stream.addr, self.ttl
                            );
                            return Some(SessionItem::Broken { why, cut: false });
                        }
                        _ => continue,
                    }
                }
            };
            self.sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            return Some(match event {
                SessionEvent::Result(Ok(result)) => {
                    self.done = result.is_err();
                    SessionItem::Result(result)
                }
                SessionEvent::Result(Err(fatal)) => {
                    self.done = true;
                    SessionItem::Fatal(fatal)
                }
                SessionEvent::Broken { why, cut } => {
                    self.done = true;
                    SessionItem::Broken { why, cut }
                }
            });
        }
    }
}

impl Drop for AppendSession {
    fn drop(&mut self) {
        self.pump.abort();
        self.stream.end_session(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_raft::typ::{CommittedLeaderId, LogId, Vote};

    fn log_id(index: u64) -> LogId {
        LogId::new(
            CommittedLeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    fn append(prev: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    /// The other end of a stream, played by hand: whole messages in, replies out.
    struct FakePeer {
        reader: Reader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        out: mpsc::Sender<Outgoing>,
    }

    impl FakePeer {
        fn start(faults: Arc<Faults>) -> (Arc<PeerStream>, FakePeer) {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            let stream = PeerStream::start("peer:1", ours, 1024, faults);
            let (read, write) = tokio::io::split(theirs);
            let (out, rx) = mpsc::channel(16);
            tokio::spawn(frame::write_loop(write, rx, 1024));
            let peer = FakePeer {
                reader: Reader::new(read, 1 << 20),
                out,
            };
            (stream, peer)
        }

        async fn next(&mut self) -> (u64, StreamRequest) {
            let message = self.reader.next().await.unwrap().unwrap();
            (message.id(), envelope::decode(message.body()).unwrap())
        }

        async fn reply(&self, id: u64, reply: StreamReply) {
            let message = Outgoing::encode(id, &reply).unwrap();
            self.out.send(message).await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_append_session_sends_on_before_its_first_request_is_answered() {
        let (stream, mut peer) = FakePeer::start(Arc::default());
        let (input, rx) = futures::channel::mpsc::unbounded();
        let mut session = stream.append_session(rx, Duration::from_secs(10)).unwrap();
        input.unbounded_send(append(1)).unwrap();
        input.unbounded_send(append(2)).unwrap();
        // The peer reads both before it answers either: a session that waited for each
        // answer before sending on would never send the second.
        let (first, a) = peer.next().await;
        let (second, b) = peer.next().await;
        assert_eq!(first, second, "one session");
        assert!(matches!(a, StreamRequest::Append(r) if r.prev_log_id == Some(log_id(1))));
        assert!(matches!(b, StreamRequest::Append(r) if r.prev_log_id == Some(log_id(2))));
        for index in [2, 3] {
            peer.reply(first, StreamReply::Append(Ok(Ok(Some(log_id(index))))))
                .await;
        }
        for index in [2, 3] {
            match session.next().await {
                Some(SessionItem::Result(Ok(Some(got)))) => assert_eq!(got, log_id(index)),
                _ => panic!("expected the result for index {index}"),
            }
        }
        drop(input);
        assert!(matches!(peer.next().await, (id, StreamRequest::EndAppend) if id == first));
    }

    #[tokio::test]
    async fn calls_are_answered_out_of_order() {
        let (stream, mut peer) = FakePeer::start(Arc::default());
        let slow = tokio::spawn({
            let stream = stream.clone();
            async move {
                let request = PeerRequest::Forward(crate::peer::ForwardRequest::ReadIndex);
                stream.call(request, Duration::from_secs(10)).await
            }
        });
        let (slow_id, _) = peer.next().await;
        let fast = tokio::spawn({
            let stream = stream.clone();
            async move {
                let request = PeerRequest::Forward(crate::peer::ForwardRequest::Initialized);
                stream.call(request, Duration::from_secs(10)).await
            }
        });
        let (fast_id, _) = peer.next().await;
        let answer = |n| {
            StreamReply::Call(PeerReply::Forward(Ok(
                crate::peer::ForwardResponse::ReadIndex(n),
            )))
        };
        peer.reply(fast_id, answer(2)).await;
        let got = fast.await.unwrap().unwrap();
        assert!(matches!(
            got,
            PeerReply::Forward(Ok(crate::peer::ForwardResponse::ReadIndex(2)))
        ));
        assert!(
            !slow.is_finished(),
            "the first call still waits for its own answer"
        );
        peer.reply(slow_id, answer(1)).await;
        let got = slow.await.unwrap().unwrap();
        assert!(matches!(
            got,
            PeerReply::Forward(Ok(crate::peer::ForwardResponse::ReadIndex(1)))
        ));
    }

    #[tokio::test]
    async fn a_cut_link_closes_the_stream_and_ends_its_sessions() {
        let faults = Arc::new(Faults::default());
        let (stream, mut peer) = FakePeer::start(faults.clone());
        let (input, rx) = futures::channel::mpsc::unbounded();
        let mut session = stream.append_session(rx, Duration::from_secs(10)).unwrap();
        input.unbounded_send(append(1)).unwrap();
        let (id, _) = peer.next().await;
        faults.block("peer:1");
        peer.reply(id, StreamReply::Append(Ok(Ok(Some(log_id(2))))))
            .await;
        assert!(matches!(
            session.next().await,
            Some(SessionItem::Broken { cut: true, .. })
        ));
        assert!(stream.is_closed());
        let request = PeerRequest::Forward(crate::peer::ForwardRequest::ReadIndex);
        let err = stream
            .call(request, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.not_sent(), "{err}");
    }
}
