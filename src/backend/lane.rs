//! A lane: one pipelined connection to one Redis node, driven by a task of its
//! own, that carries every request of one worker thread in one protocol
//! (`GET`s of cache misses, cached reads, forwarded commands alike).
//!
//! Requests are written as they come: everything queued by the time the
//! driver runs goes out in one write, so the misses of many clients handled
//! in one turn of the runtime cost Redis one read. Replies come back in order
//! and go to whoever waits for each. A request for another database than the
//! connection's is preceded by a `SELECT` of its own, and one that follows an
//! `ASK` redirection by `ASKING`.
//!
//! The connection is opened when the first request comes, and again after it
//! breaks: a broken connection is never written to again. Requests that were
//! sent on a connection that broke before their reply fail, but for reads
//! (`idempotent`), which are sent once more on the next connection. A reply
//! overdue by `--request-timeout` ends the connection (Redis is stuck or the
//! network is cut): its requests fail with a timeout.
//!
//! With `--invalidation tracking` the connection asks Redis to track what it
//! reads (a RESP2 one through a RESP3 connection of its own that receives the
//! invalidations), pushes go to the invalidation sink before any later reply
//! is handed on, and the connection is pinged every second: losing it, or a
//! ping left unanswered for `--redis-connect-timeout`, flushes the cache.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Error;
use super::circuit::{Circuit, is_node_failure, is_not_now};
use super::connect::{Connector, Setup, Tracking};
use super::link::{Link, is_push};
use super::tracking::{Invalidation, InvalidationSink};
use crate::protocol::{Frame, encode};

/// One request on a lane.
#[derive(Debug)]
pub(crate) struct Job {
    /// The request, as RESP.
    pub(crate) request: Bytes,
    /// The database it runs in (`None`: the URL's).
    pub(crate) db: Option<u16>,
    /// Sent after `ASKING` (an `ASK` redirection in a cluster).
    pub(crate) asking: bool,
    /// A read: safe to send again when its connection broke before the reply.
    pub(crate) idempotent: bool,
    /// Where the reply goes.
    pub(crate) reply: oneshot::Sender<Result<Frame, Error>>,
}

impl Job {
    /// A job for `request` in `db`, and where its reply will come.
    pub(crate) fn new(
        request: Bytes,
        db: Option<u16>,
        idempotent: bool,
    ) -> (Self, oneshot::Receiver<Result<Frame, Error>>) {
        let (reply, receiver) = oneshot::channel();
        let job = Self {
            request,
            db,
            asking: false,
            idempotent,
            reply,
        };
        (job, receiver)
    }

    fn fail(self, error: &Error) {
        let _ = self.reply.send(Err(error.clone()));
    }
}

/// How often a tracked connection is pinged.
pub(crate) const TRACKING_PING_INTERVAL: Duration = Duration::from_secs(1);

/// What a lane's connection is set up for.
#[derive(Clone)]
pub(crate) struct Options {
    /// RESP3, else RESP2.
    pub(crate) resp3: bool,
    /// With `--invalidation tracking`: where what Redis says of changed keys
    /// goes, and how long a ping may go unanswered.
    pub(crate) tracking: Option<(InvalidationSink, Duration)>,
    /// The node's circuit, told how each request ended.
    pub(crate) circuit: Arc<Circuit>,
}

/// A lane's handle: requests go to its driver.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    status: Arc<AtomicU8>,
}

/// [`Lane`] status: no connection yet, or it was closed.
const IDLE: u8 = 0;
/// [`Lane`] status: a connection is open.
const CONNECTED: u8 = 1;
/// [`Lane`] status: the last attempt to connect failed.
const FAILING: u8 = 2;

/// How soon a lane that failed to connect tries again by itself, at first
/// and at most.
const RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

impl Lane {
    /// A lane to the node `connector` reaches; its driver task starts now and
    /// connects when the first request comes.
    pub(crate) fn spawn(connector: Connector, options: Options) -> Self {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU8::new(IDLE));
        tokio::spawn(drive(connector, options, receiver, status.clone()));
        Self { jobs, status }
    }

    /// Whether the lane has a connection open.
    pub(crate) fn is_connected(&self) -> bool {
        self.status.load(Ordering::Relaxed) == CONNECTED
    }

    /// Whether the lane's last attempt to connect failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.status.load(Ordering::Relaxed) == FAILING
    }

    /// Queues `job`; its reply comes on its receiver.
    pub(crate) fn send(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            job.fail(&Error::Stopping);
        }
    }
}

/// What a reply on the connection answers.
enum Waiting {
    /// A `SELECT` or `ASKING` put in front of a request.
    Prefix,
    /// A request, and when it was written.
    Job { job: Job, sent: Instant },
    /// The lane's own liveness ping.
    Ping { sent: Instant },
}

/// The lane's driver: connects when a request comes, carries requests until
/// the connection fails, and starts over, until every handle is gone. After
/// a failed attempt to connect it tries again by itself, backing off, so a
/// lane that could not connect (Redis at its `maxclients`, say) gets its
/// connection as soon as it can while requests go to other lanes.
async fn drive(
    connector: Connector,
    options: Options,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    status: Arc<AtomicU8>,
) {
    let mut retry = VecDeque::new();
    let mut backoff = None;
    loop {
        if retry.is_empty() {
            match next_job(&mut jobs, backoff).await {
                Next::Job(first) => retry.push_back(first),
                Next::Retry => {}
                Next::Stop => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            retry.push_back(job);
        }
        let mut connection = match Connection::open(&connector, &options).await {
            Ok(connection) => connection,
            Err(error) => {
                if status.swap(FAILING, Ordering::Relaxed) != FAILING {
                    tracing::warn!(node = connector.addr(), %error, "cannot connect to redis; trying again");
                }
                crate::metrics::record_connect_failure(connector.addr());
                for job in retry.drain(..) {
                    fail(job, &error, &options.circuit);
                }
                backoff = Some(backoff.map_or(RETRY.0, |last: Duration| (last * 2).min(RETRY.1)));
                continue;
            }
        };
        if status.swap(CONNECTED, Ordering::Relaxed) == FAILING {
            tracing::info!(node = connector.addr(), "connected to redis again");
        }
        backoff = None;
        for job in retry.drain(..) {
            connection.queue(job, connector.default_db());
        }
        let failure = connection.serve(&connector, &options, &mut jobs).await;
        status.store(IDLE, Ordering::Relaxed);
        tracing::debug!(node = connector.addr(), error = %failure, "lane connection closed");
        resend_or_fail(
            &mut connection,
            failure.clone(),
            &mut retry,
            &options.circuit,
        );
        if let Some((sink, _)) = &options.tracking {
            // What this connection read is no longer tracked.
            sink(Invalidation::Unverified);
        }
        connection.link.close().await;
        if matches!(failure, Error::Stopping) {
            return;
        }
    }
}

/// What a lane waiting for work gets.
enum Next {
    Job(Job),
    /// Time to try connecting again.
    Retry,
    /// Every handle is gone.
    Stop,
}

/// The next job, or after `backoff` (when the lane failed to connect) the
/// time to try again.
async fn next_job(jobs: &mut mpsc::UnboundedReceiver<Job>, backoff: Option<Duration>) -> Next {
    let retry = async {
        match backoff {
            Some(backoff) => tokio::time::sleep(backoff).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        job = jobs.recv() => job.map_or(Next::Stop, Next::Job),
        () = retry => Next::Retry,
    }
}

/// After `connection` failed: reads sent on it go once more on the next one;
/// anything else fails, its outcome unknown.
fn resend_or_fail(
    connection: &mut Connection,
    failure: Error,
    retry: &mut VecDeque<Job>,
    circuit: &Circuit,
) {
    let resend = matches!(failure, Error::Lost { .. });
    for waiting in connection.waiting.drain(..) {
        if let Waiting::Job { mut job, .. } = waiting {
            if resend && job.idempotent && !job.reply.is_closed() {
                job.idempotent = false;
                retry.push_back(job);
            } else {
                fail(job, &failure, circuit);
            }
        }
    }
}

/// Fails `job` with `error`, which counts towards its node's circuit when it
/// is the node's failing.
fn fail(job: Job, error: &Error, circuit: &Circuit) {
    if is_node_failure(error) {
        circuit.record(Err(error));
    }
    job.fail(error);
}

/// One connection of a lane, with what was written on it and awaits a reply.
struct Connection {
    link: Link,
    /// With tracking on a RESP2 link: fires when the connection receiving its
    /// invalidations is lost.
    lost: Option<oneshot::Receiver<()>>,
    waiting: VecDeque<Waiting>,
    /// The database the connection has selected (`None`: the URL's).
    selected: Option<u16>,
    out: BytesMut,
    /// When the last liveness ping went out.
    pinged: Instant,
}

impl Connection {
    async fn open(connector: &Connector, options: &Options) -> Result<Self, Error> {
        let (tracking, lost) = match (&options.tracking, options.resp3) {
            (None, _) => (Tracking::Off, None),
            (Some(_), true) => (Tracking::Own, None),
            (Some((sink, _)), false) => {
                let (id, lost) = listen_for_invalidations(connector, sink.clone()).await?;
                (Tracking::Redirect(id), Some(lost))
            }
        };
        let setup = Setup {
            resp3: options.resp3,
            db: None,
            tracking,
            identify: true,
        };
        Ok(Self {
            link: connector.open(setup).await?,
            lost,
            waiting: VecDeque::new(),
            selected: None,
            out: BytesMut::new(),
            pinged: Instant::now(),
        })
    }

    /// Adds `job` to what is written next; one whose caller gave up already
    /// is not sent.
    fn queue(&mut self, job: Job, default_db: i64) {
        if job.reply.is_closed() {
            return;
        }
        if job.db != self.selected {
            let index = job.db.map_or(default_db, i64::from).to_string();
            encode(&["SELECT", &index], &mut self.out);
            self.waiting.push_back(Waiting::Prefix);
            self.selected = job.db;
        }
        if job.asking {
            encode(&["ASKING"], &mut self.out);
            self.waiting.push_back(Waiting::Prefix);
        }
        self.out.extend_from_slice(&job.request);
        self.waiting.push_back(Waiting::Job {
            job,
            sent: Instant::now(),
        });
    }

    /// Carries jobs until the connection fails; returns why.
    async fn serve(
        &mut self,
        connector: &Connector,
        options: &Options,
        jobs: &mut mpsc::UnboundedReceiver<Job>,
    ) -> Error {
        let timeout = connector.timeout();
        loop {
            if !self.out.is_empty() {
                if let Err(error) = self.link.write(&self.out).await {
                    return error;
                }
                self.out.clear();
            }
            // Replies already read are handed on before waiting for anything.
            loop {
                match self.link.take() {
                    Ok(Some(frame)) => {
                        if let Err(error) = self.answer(frame, options) {
                            return error;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return error,
                }
            }
            let wake = self.next_wake(timeout, options);
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        self.queue(job, connector.default_db());
                        while let Ok(job) = jobs.try_recv() {
                            self.queue(job, connector.default_db());
                        }
                    }
                    None => return Error::Stopping,
                },
                filled = self.link.fill() => {
                    if let Err(error) = filled {
                        return error;
                    }
                }
                () = lost(&mut self.lost) => {
                    return Error::lost("the connection receiving its invalidations closed");
                }
                wake = sleep(wake) => match wake {
                    Wake::Overdue(error) => return error,
                    Wake::Ping => self.ping(),
                },
            }
        }
    }

    /// When the loop must next wake by itself, and what for: a reply overdue
    /// (the connection ends), or a liveness ping due.
    fn next_wake(&self, timeout: Duration, options: &Options) -> Option<(Instant, Wake)> {
        let oldest = self.waiting.iter().find_map(|waiting| match waiting {
            Waiting::Job { sent, .. } => Some(*sent),
            _ => None,
        });
        let overdue = oldest.map(|sent| {
            let error = Error::Timeout {
                what: "a request",
                timeout,
            };
            (sent + timeout, Wake::Overdue(error))
        });
        let Some((_, ping_timeout)) = &options.tracking else {
            return overdue;
        };
        let ping = self.waiting.iter().find_map(|waiting| match waiting {
            Waiting::Ping { sent } => Some(*sent),
            _ => None,
        });
        let ping = match ping {
            Some(sent) => {
                let error = Error::lost("a tracked connection stopped answering PING");
                (sent + *ping_timeout, Wake::Overdue(error))
            }
            None => (self.pinged + TRACKING_PING_INTERVAL, Wake::Ping),
        };
        match overdue {
            Some(overdue) if overdue.0 < ping.0 => Some(overdue),
            _ => Some(ping),
        }
    }

    /// Sends the liveness ping.
    fn ping(&mut self) {
        encode(&["PING"], &mut self.out);
        let now = Instant::now();
        self.waiting.push_back(Waiting::Ping { sent: now });
        self.pinged = now;
    }

    /// Hands one frame to whoever waits for it; pushes are invalidations.
    fn answer(&mut self, frame: Frame, options: &Options) -> Result<(), Error> {
        if is_push(&frame) {
            if let Some((sink, _)) = &options.tracking {
                deliver(sink, &frame);
            }
            return Ok(());
        }
        match self.waiting.pop_front() {
            Some(Waiting::Prefix) => match frame.error_text() {
                Some(error) => Err(Error::Refused(format!("SELECT or ASKING failed: {error}"))),
                None => Ok(()),
            },
            Some(Waiting::Job { job, .. }) => {
                match frame.error_text().filter(|error| is_not_now(error)) {
                    Some(error) => options.circuit.record(Err(&Error::Reply(error.into()))),
                    None => options.circuit.record(Ok(())),
                }
                let _ = job.reply.send(Ok(frame));
                Ok(())
            }
            Some(Waiting::Ping { .. }) => {
                options.circuit.record(Ok(()));
                Ok(())
            }
            None => Err(Error::lost("a reply nobody asked for")),
        }
    }
}

/// Why a lane's loop wakes by itself.
enum Wake {
    /// A reply, or a ping's, is overdue: the connection ends with this.
    Overdue(Error),
    /// A liveness ping is due.
    Ping,
}

/// Sleeps until `wake`'s instant and says why; for ever without one.
async fn sleep(wake: Option<(Instant, Wake)>) -> Wake {
    match wake {
        Some((at, wake)) => {
            tokio::time::sleep_until(at).await;
            wake
        }
        None => std::future::pending().await,
    }
}

/// Completes when `lost` fires (never when there is none).
async fn lost(lost: &mut Option<oneshot::Receiver<()>>) {
    match lost {
        Some(lost) => drop(lost.await),
        None => std::future::pending().await,
    }
}

/// Passes what an invalidation push says to `sink`.
fn deliver(sink: &InvalidationSink, frame: &Frame) {
    match frame.invalidation() {
        Some(Some(keys)) => sink(Invalidation::Keys(keys)),
        Some(None) => sink(Invalidation::All),
        None => {}
    }
}

/// Opens the RESP3 connection a tracked RESP2 connection redirects its
/// invalidations to, and a task that passes them on: its id, and a receiver
/// that fires when it is lost (the task ends with the connection it serves).
async fn listen_for_invalidations(
    connector: &Connector,
    sink: InvalidationSink,
) -> Result<(i64, oneshot::Receiver<()>), Error> {
    let setup = Setup {
        resp3: true,
        db: None,
        tracking: Tracking::Off,
        identify: true,
    };
    let mut listener = connector.open(setup).await?;
    let id = listener.id;
    let (mut lost_tx, lost) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                read = listener.read() => match read {
                    Ok(frame) => deliver(&sink, &frame),
                    Err(_) => break,
                },
                // The connection it served is gone.
                () = lost_tx.closed() => break,
            }
        }
        drop(lost_tx);
        listener.close().await;
    });
    Ok((id, lost))
}
