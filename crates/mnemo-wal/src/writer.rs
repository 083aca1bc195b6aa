//! The writer: fencing and recovery at open, then appends with group commit on one I/O thread.

use crate::format::{encode_rows, seal_block, SEGMENT_HEADER_LEN};
use crate::reader::BlockIter;
use crate::segments::{self, Scan};
use crate::{lock, Error, SegmentMeta, Shared};
use async_trait::async_trait;
use futures::FutureExt;
use slatedb::wal::{
    WalError, WalEvent, WalFlushResult, WalObserver, WalStatus, WalStatusListener, WalWriter,
    WriterInit, WriterInitResult, WriterManifest,
};
use slatedb::RowEntry;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Fences, recovers and starts a [`SegmentWalWriter`].
pub(crate) struct SegmentWriterInit {
    shared: Arc<Shared>,
}

impl SegmentWriterInit {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SegmentWriterInit { shared }
    }
}

/// What recovery found and prepared, under the gate.
struct Recovered {
    generation: u64,
    blocks: Vec<segments::BlockRef>,
    last_id: u64,
    segment: ActiveSegment,
}

/// Fences the previous writer of this process, makes every segment durable, finds the chain of
/// blocks to replay, and creates the segment new blocks go to.
fn recover(shared: &Shared, epoch: u64, after: u64, next_id: u64) -> Result<Recovered, Error> {
    let dir = &shared.dir;
    // Holding the gate while reading the log means the previous writer (if this process had
    // one) has finished its last write; bumping the generation fences it from any further one.
    let mut gate = lock(&shared.gate);
    *gate += 1;
    let generation = *gate;
    segments::remove_temporaries(dir)?;
    let scans = segments::scan_all(dir)?;
    // What a crashed process wrote may still be only in the page cache. Make it durable before
    // replaying it: new blocks are numbered after it, and must never outlive it.
    for scan in &scans {
        File::open(&scan.path)
            .and_then(|f| f.sync_data())
            .map_err(|e| Error::io(&scan.path, e))?;
    }
    segments::sync_dir(dir)?;
    // A new log starts after every id the database used so far, including those of a WAL it
    // had before (whose rows are in SSTs by then: see `mnemo-storage`'s engine).
    let base = match segments::read_base(dir)? {
        Some(base) => base,
        None => {
            let base = next_id.saturating_sub(1).max(after);
            segments::write_base(dir, base)?;
            base
        }
    };
    let after = after.max(base);
    let blocks = segments::chain(&scans, after, None)?;
    let last_id = blocks.last().map_or(after, |b| b.block.id);
    if next_id.saturating_sub(1) > last_id {
        tracing::warn!(
            last_id,
            manifest_next = next_id,
            "the manifest names WAL ids this log never wrote; continuing after them"
        );
    }
    let last_id = last_id.max(next_id.saturating_sub(1));
    let number = scans.last().map_or(1, |s| s.number + 1);
    let file = segments::preallocate(dir, number, epoch, shared.options.segment_bytes)?;
    let mut metas = lock(&shared.segments);
    metas.clear();
    for Scan {
        number, blocks: b, ..
    } in &scans
    {
        metas.insert(
            *number,
            SegmentMeta {
                first: b.first().map(|b| b.id),
                last: b.last().map(|b| b.id),
                in_use: false,
            },
        );
    }
    metas.insert(
        number,
        SegmentMeta {
            in_use: true,
            ..SegmentMeta::default()
        },
    );
    drop(metas);
    drop(gate);
    Ok(Recovered {
        generation,
        blocks,
        last_id,
        segment: ActiveSegment {
            number,
            file,
            offset: SEGMENT_HEADER_LEN as u64,
        },
    })
}

#[async_trait]
impl WriterInit for SegmentWriterInit {
    async fn fence_and_init(
        &self,
        manifest: &mut WriterManifest,
    ) -> Result<WriterInitResult, WalError> {
        let epoch = manifest.epoch();
        let after = manifest.replay_after_wal_id();
        let next_id = manifest.manifest().next_wal_sst_id();
        let shared = Arc::clone(&self.shared);
        let recovered =
            tokio::task::spawn_blocking(move || recover(&shared, epoch, after, next_id))
                .await
                .map_err(|e| WalError::InternalError(Arc::new(e)))??;
        tracing::info!(
            dir = %self.shared.dir.display(),
            replay_after = after,
            replay_blocks = recovered.blocks.len(),
            segment = recovered.segment.number,
            "local WAL recovered"
        );
        let writer = SegmentWalWriter::start(
            Arc::clone(&self.shared),
            recovered.generation,
            epoch,
            recovered.last_id,
            recovered.segment,
        )
        .map_err(WalError::from)?;
        Ok(WriterInitResult {
            replay_iterator: Box::new(BlockIter::new(recovered.blocks)),
            wal_writer: Box::new(writer),
        })
    }
}

/// The segment the I/O thread appends to.
struct ActiveSegment {
    number: u64,
    file: File,
    offset: u64,
}

/// A block sealed by a flush request, waiting for the I/O thread.
struct Sealed {
    id: u64,
    rows: u32,
    body: Vec<u8>,
    last_seq: Option<u64>,
}

/// Everything the appenders, the observer and the I/O thread share.
struct State {
    /// Rows appended since the last seal, encoded.
    body: Vec<u8>,
    rows: u32,
    body_last_seq: Option<u64>,
    /// Sealed blocks not yet written.
    sealed: Vec<Sealed>,
    next_id: u64,
    last_flushed_id: u64,
    last_flushed_seq: Option<u64>,
    closed: Option<WalError>,
    stopping: bool,
    /// The I/O thread is waiting for work: an append must wake it. While it writes or syncs,
    /// appends need not (it looks for more before it waits again), which saves a futex call
    /// per write under load.
    io_waiting: bool,
    listener: Option<WalStatusListener>,
    /// Flush requests waiting for a block id to be durable.
    waiters: Vec<(u64, oneshot::Sender<Result<(), WalError>>)>,
    /// Bytes written since the log opened, and `(block id, bytes written up to it)` marks for
    /// deciding when SlateDB should flush its memtable.
    written: u64,
    marks: VecDeque<(u64, u64)>,
}

impl State {
    /// Turns the rows appended so far into a block; returns the id of the last block.
    fn seal(&mut self) -> u64 {
        if self.rows > 0 {
            let id = self.next_id;
            self.next_id += 1;
            self.sealed.push(Sealed {
                id,
                rows: self.rows,
                body: std::mem::take(&mut self.body),
                last_seq: self.body_last_seq.take(),
            });
            self.rows = 0;
        }
        self.next_id - 1
    }

    fn status(&self) -> WalStatus {
        WalStatus {
            closed_reason: self.closed.clone(),
            estimated_bytes: self.body.len()
                + self.sealed.iter().map(|s| s.body.len()).sum::<usize>(),
            last_flushed_wal_id: self.last_flushed_id,
            last_flushed_seq: self.last_flushed_seq,
            buffered_wal_entries_count: self.rows as usize
                + self.sealed.iter().map(|s| s.rows as usize).sum::<usize>(),
        }
    }

    fn result(&self) -> Result<WalStatus, WalStatus> {
        if self.closed.is_some() {
            Err(self.status())
        } else {
            Ok(self.status())
        }
    }
}

struct Core {
    state: Mutex<State>,
    wake: Condvar,
}

impl Core {
    fn notify(&self, listener: Option<WalStatusListener>, event: WalEvent) {
        if let Some(l) = listener {
            l(event);
        }
    }
}

/// The writer SlateDB appends to.
pub(crate) struct SegmentWalWriter {
    core: Arc<Core>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SegmentWalWriter {
    fn start(
        shared: Arc<Shared>,
        generation: u64,
        epoch: u64,
        last_id: u64,
        segment: ActiveSegment,
    ) -> Result<SegmentWalWriter, Error> {
        let core = Arc::new(Core {
            state: Mutex::new(State {
                body: Vec::new(),
                rows: 0,
                body_last_seq: None,
                sealed: Vec::new(),
                next_id: last_id + 1,
                last_flushed_id: last_id,
                last_flushed_seq: None,
                closed: None,
                stopping: false,
                io_waiting: false,
                listener: None,
                waiters: Vec::new(),
                written: 0,
                marks: VecDeque::from([(last_id, 0)]),
            }),
            wake: Condvar::new(),
        });
        let io = IoThread {
            core: Arc::clone(&core),
            shared: Arc::clone(&shared),
            generation,
            epoch,
            segment,
            spare: None,
        };
        let thread = std::thread::Builder::new()
            .name("mnemo-wal".into())
            .spawn(move || io.run())
            .map_err(|e| Error::io(&shared.dir, e))?;
        Ok(SegmentWalWriter {
            core,
            shared,
            thread: Some(thread),
        })
    }
}

#[async_trait]
impl WalWriter for SegmentWalWriter {
    async fn append(&mut self, write_batch: &[RowEntry]) -> Result<(), WalError> {
        let mut st = lock(&self.core.state);
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        encode_rows(&mut st.body, write_batch);
        st.rows += write_batch.len() as u32;
        if let Some(seq) = write_batch.iter().map(|r| r.seq).max() {
            st.body_last_seq = Some(st.body_last_seq.map_or(seq, |s| s.max(seq)));
        }
        let wake = st.io_waiting;
        drop(st);
        if wake {
            self.core.wake.notify_one();
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<WalFlushResult, WalError> {
        let mut st = lock(&self.core.state);
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        let wal_id = st.seal();
        if wal_id <= st.last_flushed_id {
            return Ok(WalFlushResult {
                wal_id,
                completion: async { Ok(()) }.boxed(),
            });
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push((wal_id, tx));
        drop(st);
        self.core.wake.notify_one();
        Ok(WalFlushResult {
            wal_id,
            completion: async move { rx.await.unwrap_or(Err(WalError::Closed)) }.boxed(),
        })
    }

    fn should_flush_memtable(&self, replay_after_wal_id: u64) -> bool {
        let mut st = lock(&self.core.state);
        // Drop the marks the memtables have moved past, keeping the one at or before the
        // replay point: it tells how many bytes were written up to it.
        while st.marks.len() > 1 && st.marks[1].0 <= replay_after_wal_id {
            st.marks.pop_front();
        }
        let base = st.marks.front().map_or(0, |m| m.1);
        st.written - base >= self.shared.options.memtable_flush_bytes
    }

    fn observer(&self) -> Box<dyn WalObserver> {
        Box::new(Observer {
            core: Arc::clone(&self.core),
        })
    }

    fn status(&self) -> Result<WalStatus, WalStatus> {
        lock(&self.core.state).result()
    }

    async fn close(&mut self) -> Result<(), WalError> {
        {
            let mut st = lock(&self.core.state);
            st.stopping = true;
        }
        self.core.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The I/O thread writes what is pending, then exits.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let st = lock(&self.core.state);
        match &st.closed {
            Some(WalError::Closed) | None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }
}

impl Drop for SegmentWalWriter {
    fn drop(&mut self) {
        // A writer dropped without `close` (the database failed) stops its thread too.
        lock(&self.core.state).stopping = true;
        self.core.wake.notify_one();
    }
}

struct Observer {
    core: Arc<Core>,
}

impl WalObserver for Observer {
    fn status(&self) -> Result<WalStatus, WalStatus> {
        lock(&self.core.state).result()
    }

    fn subscribe(&self, listener: WalStatusListener) -> Result<(), WalError> {
        let mut st = lock(&self.core.state);
        if st.closed.is_some() {
            let status = st.status();
            drop(st);
            listener(WalEvent::WalClosed(status));
            return Ok(());
        }
        st.listener = Some(listener);
        Ok(())
    }
}

/// The thread that writes and syncs.
struct IoThread {
    core: Arc<Core>,
    shared: Arc<Shared>,
    generation: u64,
    epoch: u64,
    segment: ActiveSegment,
    /// The next segment, being preallocated in the background.
    spare: Option<(u64, JoinHandle<Result<File, Error>>)>,
}

impl IoThread {
    fn run(mut self) {
        let mut buf = Vec::new();
        let reason = loop {
            let blocks = {
                let mut st = lock(&self.core.state);
                while st.rows == 0 && st.sealed.is_empty() && !st.stopping {
                    st.io_waiting = true;
                    st = self.core.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.io_waiting = false;
                }
                st.seal();
                if st.sealed.is_empty() {
                    break WalError::Closed;
                }
                std::mem::take(&mut st.sealed)
            };
            buf.clear();
            for b in &blocks {
                seal_block(&mut buf, b.id, b.rows, &b.body);
            }
            let started = std::time::Instant::now();
            let written = self.write(&buf);
            metrics::histogram!("mnemo_store_flush_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = written {
                tracing::error!(error = %e, "local WAL write failed; the log is closed");
                break e;
            }
            metrics::counter!("mnemo_store_flushes_total").increment(1);
            metrics::counter!("mnemo_wal_bytes_total").increment(buf.len() as u64);
            self.record(&blocks, buf.len() as u64);
        };
        self.finish(reason);
    }

    /// Writes `buf` at the end of the log and syncs it, under the gate.
    fn write(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let shared = Arc::clone(&self.shared);
        let gate = lock(&shared.gate);
        if *gate != self.generation {
            return Err(WalError::Fenced);
        }
        let size = self.shared.options.segment_bytes;
        if self.segment.offset + buf.len() as u64 > size
            && self.segment.offset > SEGMENT_HEADER_LEN as u64
        {
            self.roll()?;
        }
        let seg = &mut self.segment;
        seg.file
            .write_all_at(buf, seg.offset)
            .and_then(|()| {
                #[cfg(test)]
                if shared
                    .fail_next_sync
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    return Err(std::io::Error::other("injected fdatasync failure"));
                }
                seg.file.sync_data()
            })
            .map_err(|e| {
                WalError::from(Error::io(
                    &segments::segment_path(&self.shared.dir, seg.number),
                    e,
                ))
            })?;
        seg.offset += buf.len() as u64;
        drop(gate);
        if self.spare.is_none() && self.segment.offset > size / 2 {
            let (dir, number, epoch) =
                (self.shared.dir.clone(), self.segment.number + 1, self.epoch);
            lock(&self.shared.segments).insert(
                number,
                SegmentMeta {
                    in_use: true,
                    ..SegmentMeta::default()
                },
            );
            let handle = std::thread::Builder::new()
                .name("mnemo-wal-prealloc".into())
                .spawn(move || segments::preallocate(&dir, number, epoch, size))
                .map_err(|e| WalError::from(Error::io(&self.shared.dir, e)))?;
            self.spare = Some((number, handle));
        }
        Ok(())
    }

    /// Moves to the next segment (the spare, or a new one made now).
    fn roll(&mut self) -> Result<(), WalError> {
        let number = self.segment.number + 1;
        let file = match self.spare.take() {
            Some((n, handle)) if n == number => handle.join().map_err(|_| {
                WalError::InternalError(Arc::new(std::io::Error::other("preallocation panicked")))
            })??,
            _ => segments::preallocate(
                &self.shared.dir,
                number,
                self.epoch,
                self.shared.options.segment_bytes,
            )?,
        };
        let mut metas = lock(&self.shared.segments);
        if let Some(m) = metas.get_mut(&self.segment.number) {
            m.in_use = false;
        }
        metas.entry(number).or_default().in_use = true;
        drop(metas);
        self.segment = ActiveSegment {
            number,
            file,
            offset: SEGMENT_HEADER_LEN as u64,
        };
        Ok(())
    }

    /// Marks written blocks durable, wakes their waiters and tells SlateDB.
    fn record(&self, blocks: &[Sealed], bytes: u64) {
        let (first, last) = match (blocks.first(), blocks.last()) {
            (Some(f), Some(l)) => (f.id, l.id),
            _ => return,
        };
        {
            let mut metas = lock(&self.shared.segments);
            let m = metas.entry(self.segment.number).or_default();
            m.first.get_or_insert(first);
            m.last = Some(last);
        }
        let mut st = lock(&self.core.state);
        st.last_flushed_id = last;
        if let Some(seq) = blocks.iter().filter_map(|b| b.last_seq).max() {
            st.last_flushed_seq = Some(st.last_flushed_seq.map_or(seq, |s| s.max(seq)));
        }
        st.written += bytes;
        let written = st.written;
        st.marks.push_back((last, written));
        let mut done = Vec::new();
        for (id, tx) in std::mem::take(&mut st.waiters) {
            if id <= last {
                done.push(tx);
            } else {
                st.waiters.push((id, tx));
            }
        }
        let status = st.status();
        let listener = st.listener.clone();
        drop(st);
        // SlateDB first, so that a flush that returns finds the rows durable in the database.
        self.core.notify(listener, WalEvent::WalFlushed(status));
        for tx in done {
            let _ = tx.send(Ok(()));
        }
    }

    /// Closes the log with `reason`: fails waiters and pending rows, tells SlateDB.
    fn finish(mut self, reason: WalError) {
        if let Some((_, handle)) = self.spare.take() {
            let _ = handle.join();
        }
        let mut st = lock(&self.core.state);
        st.closed.get_or_insert(reason);
        let err = st.closed.clone().unwrap_or(WalError::Closed);
        for (_, tx) in st.waiters.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        st.body.clear();
        st.rows = 0;
        st.sealed.clear();
        let status = st.status();
        let listener = st.listener.take();
        drop(st);
        self.core.notify(listener, WalEvent::WalClosed(status));
    }
}
