//! The shared path: one connection to Redis per worker thread and protocol,
//! carrying every forwarded command of that thread's clients that leaves no
//! state behind on the connection. Requests are written as they come (a
//! client's pipeline stays in order, and many clients' requests share one
//! write); replies come back in the same order and go to whoever waits for
//! each. A request for another database than the connection's is preceded by a
//! `SELECT` of its own.
//!
//! What a write changed is invalidated when its reply arrives, before the reply
//! is handed on: a client that reads after its write was acknowledged never
//! gets a value cached before it. With `--invalidation tracking` the connection
//! asks Redis to track what it reads (RESP2 connections through a RESP3
//! connection of their own that receives the invalidations); losing either
//! flushes the cache, as losing any tracked connection does.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::frame::Frame;
use super::link::{self, Link, Tracking};
use super::{After, Forwarding};
use crate::backend::Manager;
use crate::lookup::Error;

/// One forwarded request.
pub(crate) struct Job {
    /// The request, as RESP.
    pub(crate) request: Bytes,
    /// The database it runs in (`None`: the URL's).
    pub(crate) db: Option<u16>,
    /// What its reply invalidates.
    pub(crate) after: After,
    /// Where the reply goes.
    pub(crate) reply: oneshot::Sender<Result<Frame, Error>>,
    /// Sent after `ASKING` (an `ASK` redirection in a cluster).
    pub(crate) asking: bool,
    /// Redirections followed so far.
    pub(crate) redirects: u8,
}

impl Job {
    /// A job for `request`, and where its reply will come.
    pub(crate) fn new(
        request: Bytes,
        db: Option<u16>,
        after: After,
    ) -> (Self, oneshot::Receiver<Result<Frame, Error>>) {
        let (reply, receiver) = oneshot::channel();
        let job = Self {
            request,
            db,
            after,
            reply,
            asking: false,
            redirects: 0,
        };
        (job, receiver)
    }
}

/// Redirections one forwarded command follows at most.
const MAX_REDIRECTS: u8 = 5;

/// What a reply on the connection answers.
enum Waiting {
    /// A `SELECT` or `ASKING` the forwarder put in front of a request.
    Select,
    /// A request; it is kept to be sent again should a cluster redirect it.
    Job { job: Job, sent: Instant },
}

/// Runs the forwarder of one worker thread, node (`addr`, reached with
/// `backend`) and protocol until every sender is gone.
pub(crate) async fn run(
    forwarding: Arc<Forwarding>,
    addr: String,
    backend: Manager,
    resp3: bool,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let timeout = backend.response_timeout();
    let node = Node {
        forwarding: &forwarding,
        addr: &addr,
        resp3,
    };
    while let Some(first) = jobs.recv().await {
        let (mut link, lost) = match connect(&forwarding, &backend, resp3).await {
            Ok(opened) => opened,
            Err(error) => {
                let _ = first.reply.send(Err(error.clone()));
                while let Ok(job) = jobs.try_recv() {
                    let _ = job.reply.send(Err(error.clone()));
                }
                continue;
            }
        };
        let mut waiting = VecDeque::new();
        let mut selected = None;
        let mut out = BytesMut::new();
        queue(
            forwarding.default_db,
            first,
            &mut selected,
            &mut waiting,
            &mut out,
        );
        let failure = serve(
            &node,
            &mut link,
            lost,
            &mut jobs,
            &mut waiting,
            &mut selected,
            &mut out,
            timeout,
        )
        .await;
        for waiting in waiting.drain(..) {
            if let Waiting::Job { job, .. } = waiting {
                let _ = job.reply.send(Err(failure.clone()));
            }
        }
        if forwarding.tracking.is_some() {
            // What this connection read is no longer tracked.
            forwarding.cache.flush();
        }
        tracing::debug!(error = %failure, "forwarding connection closed");
        link.close().await;
    }
}

/// Opens the connection, and with tracking on a RESP2 one, the RESP3
/// connection its invalidations go to: the receiver fires when that one fails.
async fn connect(
    forwarding: &Arc<Forwarding>,
    backend: &Manager,
    resp3: bool,
) -> Result<(Link, Option<oneshot::Receiver<()>>), Error> {
    let (tracking, lost) = match (&forwarding.tracking, resp3) {
        (None, _) => (Tracking::Off, None),
        (Some(_), true) => (Tracking::Own, None),
        (Some(sink), false) => {
            let (mut lost_tx, lost) = oneshot::channel::<()>();
            let mut listener = Link::open(backend, true, None, Tracking::Off).await?;
            let id = listener.id;
            let sink = sink.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        read = listener.read() => match read {
                            Ok(frame) => match frame.invalidation() {
                                Some(Some(keys)) => sink(crate::backend::Invalidation::Keys(keys)),
                                Some(None) => sink(crate::backend::Invalidation::All),
                                None => {}
                            },
                            Err(_) => break,
                        },
                        // The link it served is gone.
                        () = lost_tx.closed() => break,
                    }
                }
                drop(lost_tx);
                listener.close().await;
            });
            (Tracking::Redirect(id), Some(lost))
        }
    };
    let link = Link::open(backend, resp3, None, tracking).await?;
    Ok((link, lost))
}

/// Adds `job` to what is written next.
fn queue(
    default_db: i64,
    job: Job,
    selected: &mut Option<u16>,
    waiting: &mut VecDeque<Waiting>,
    out: &mut BytesMut,
) {
    if job.db != *selected {
        let index = job.db.map_or(default_db, i64::from).to_string();
        link::encode(&["SELECT", &index], out);
        waiting.push_back(Waiting::Select);
        *selected = job.db;
    }
    if job.asking {
        link::encode(&["ASKING"], out);
        waiting.push_back(Waiting::Select);
    }
    out.extend_from_slice(&job.request);
    waiting.push_back(Waiting::Job {
        job,
        sent: Instant::now(),
    });
}

/// Carries jobs until the connection fails; returns why.
#[allow(clippy::too_many_arguments)]
async fn serve(
    node: &Node<'_>,
    link: &mut Link,
    mut lost: Option<oneshot::Receiver<()>>,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    waiting: &mut VecDeque<Waiting>,
    selected: &mut Option<u16>,
    out: &mut BytesMut,
    timeout: std::time::Duration,
) -> Error {
    loop {
        if !out.is_empty() {
            if let Err(error) = link.write(out).await {
                return error;
            }
            out.clear();
        }
        // Replies already read are handed on before waiting for anything.
        loop {
            match link.take() {
                Ok(Some(frame)) => {
                    if let Err(error) = answer(node, frame, waiting) {
                        return error;
                    }
                }
                Ok(None) => break,
                Err(error) => return error,
            }
        }
        let deadline = match waiting.iter().find_map(|w| match w {
            Waiting::Job { sent, .. } => Some(*sent),
            Waiting::Select => None,
        }) {
            Some(sent) => sent + timeout,
            None => Instant::now() + std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    queue(node.forwarding.default_db, job, selected, waiting, out);
                    while let Ok(job) = jobs.try_recv() {
                        queue(node.forwarding.default_db, job, selected, waiting, out);
                    }
                }
                None => return Error::unavailable("the proxy is stopping"),
            },
            filled = link.fill() => {
                if let Err(error) = filled {
                    return error;
                }
            }
            () = async {
                match &mut lost {
                    Some(lost) => drop(lost.await),
                    None => std::future::pending().await,
                }
            } => {
                return link::lost("the connection receiving its invalidations closed");
            }
            () = tokio::time::sleep_until(deadline) => {
                return Error::unavailable(format!(
                    "redis did not reply within {} (--request-timeout)",
                    humantime::format_duration(timeout)
                ));
            }
        }
    }
}

/// The node a forwarder serves.
struct Node<'a> {
    forwarding: &'a Arc<Forwarding>,
    addr: &'a str,
    resp3: bool,
}

/// Hands one frame to whoever waits for it; pushes are invalidations. In a
/// cluster, a `MOVED` or `ASK` reply sends the request on to the node it names
/// (the request did not run: nothing is invalidated).
fn answer(node: &Node<'_>, frame: Frame, waiting: &mut VecDeque<Waiting>) -> Result<(), Error> {
    let forwarding = node.forwarding;
    if link::is_push(&frame) {
        forwarding.invalidated(&frame);
        return Ok(());
    }
    match waiting.pop_front() {
        Some(Waiting::Select) => match frame.error_text() {
            Some(error) => Err(Error::unavailable(format!("SELECT failed: {error}"))),
            None => Ok(()),
        },
        Some(Waiting::Job { mut job, .. }) => {
            if let (Some(cluster), Some(error)) = (&forwarding.cluster, frame.error_text())
                && job.redirects < MAX_REDIRECTS
                && let Some((asking, target)) = redirection(&error)
                && target != node.addr
                && let Ok(manager) = cluster.manager_at(target)
            {
                if !asking {
                    cluster.refresh_soon();
                }
                job.asking = asking;
                job.redirects += 1;
                forwarding.send_job(node.resp3, target, || manager, job);
                return Ok(());
            }
            forwarding.apply(&job.after);
            let _ = job.reply.send(Ok(frame));
            Ok(())
        }
        None => Err(link::lost("a reply nobody asked for")),
    }
}

/// `MOVED slot host:port` → `(false, host:port)`; `ASK slot host:port` →
/// `(true, host:port)`.
fn redirection(error: &str) -> Option<(bool, &str)> {
    let mut words = error.split_whitespace();
    let asking = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    words.next()?;
    Some((asking, words.next()?))
}
