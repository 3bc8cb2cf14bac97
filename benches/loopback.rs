//! `./bench.sh loopback`: what the kernel alone charges for one delivery over loopback TCP on
//! this machine, with no WebSocket, no server and no runtime on the path.
//!
//! 9,000 connected socket pairs (`LOOPBACK_CONNS`; both ends are in this process, so 18,000
//! descriptors); one thread writes 300-byte messages
//! (about the size of a `room:message` event) round-robin over the pairs at a paced rate, as a
//! fan-out server would, and one thread reads them with epoll, as a client process would.
//! Each message goes to a different connection than the one before, so, as in the e2e and
//! fanout workloads, no read or write carries more than one message unless the reader falls
//! behind. Each thread's CPU (user + system, `/proc/thread-self/stat`) over the window is
//! divided by the messages it handled.
//!
//! The sum is a floor for any server and client pair on this machine: a realtime server that
//! delivers N messages/s to N different sockets, and the clients that read them, spend at
//! least N × that much CPU in the kernel. The RESULT line ends with the rate at which that
//! floor alone fills every core.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// About the size of one `room:message` envelope with a 100-byte payload.
const MESSAGE: usize = 300;
/// Messages per pacing tick of the writer (one tick a millisecond at 1,000 × this rate).
const TICK: Duration = Duration::from_millis(1);

struct Rung {
    rate: u64,
    sent: u64,
    secs: f64,
    send_us: f64,
    recv_us: f64,
    reads: u64,
}

impl Rung {
    fn total_us(&self) -> f64 {
        self.send_us + self.recv_us
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("loopback bench: {e}");
        std::process::exit(1);
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|e| format!("{name}={value}: {e}").into()),
        Err(_) => Ok(default),
    }
}

fn run() -> Result<(), BoxError> {
    let conns: usize = env_or("LOOPBACK_CONNS", 9_000)?;
    let secs: u64 = env_or("LOOPBACK_SECS", 5)?;
    let rates: Vec<u64> = env_or("LOOPBACK_RATES", "20000,50000,100000,200000".to_owned())?
        .split(',')
        .map(|r| r.trim().parse::<u64>())
        .collect::<Result<_, _>>()?;
    if conns == 0 || secs == 0 || rates.iter().any(|&r| r < 1000) {
        return Err(
            "LOOPBACK_CONNS and LOOPBACK_SECS must be positive, rates at least 1000".into(),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "loopback bench: {conns} TCP pairs on 127.0.0.1, {MESSAGE}-byte messages round-robin, {secs} s per rate; {cores} cores; load average at start: {}",
        load_average()
    );
    let (mut writers, readers) = connect(conns)?;
    let mut reader = Reader::new(readers)?;
    let mut rungs = Vec::new();
    for &rate in &rates {
        let rung = measure(&mut writers, &mut reader, rate, secs)?;
        println!(
            "  {:>7} msgs/s: sent {} in {:.1} s ({:.0}/s), {} reads; kernel+user CPU per message: writer {:.2} us, reader {:.2} us, together {:.2} us",
            rung.rate,
            rung.sent,
            rung.secs,
            rung.sent as f64 / rung.secs,
            rung.reads,
            rung.send_us,
            rung.recv_us,
            rung.total_us(),
        );
        rungs.push(rung);
    }
    let best = rungs
        .iter()
        .min_by(|a, b| a.total_us().total_cmp(&b.total_us()))
        .ok_or("no rates")?;
    let ceiling = cores as f64 * 1e6 / best.total_us();
    println!(
        "cheapest rate: {} msgs/s at {:.2} us per message (writer {:.2} + reader {:.2}); {cores} cores doing nothing else would top out at {:.0} deliveries/s; load average at end: {}",
        best.rate,
        best.total_us(),
        best.send_us,
        best.recv_us,
        ceiling,
        load_average()
    );
    println!(
        "RESULT loopback send_us={:.2} recv_us={:.2} total_us={:.2} ceiling_deliveries_per_s={:.0}",
        best.send_us,
        best.recv_us,
        best.total_us(),
        ceiling
    );
    Ok(())
}

/// `conns` connected pairs: the accepted ends (written) and the connecting ends (read).
fn connect(conns: usize) -> Result<(Vec<TcpStream>, Vec<TcpStream>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut writers = Vec::with_capacity(conns);
    let mut readers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let reader = TcpStream::connect(address)
            .map_err(|e| format!("connect ({} pairs so far): {e}", readers.len()))?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        reader.set_nodelay(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    Ok((writers, readers))
}

/// The reading side, kept across rates: an epoll set over every connection.
struct Reader {
    poll: Poll,
    streams: Vec<MioStream>,
}

impl Reader {
    fn new(readers: Vec<TcpStream>) -> Result<Reader, BoxError> {
        let poll = Poll::new()?;
        let mut streams = Vec::with_capacity(readers.len());
        for (i, stream) in readers.into_iter().enumerate() {
            stream.set_nonblocking(true)?;
            let mut stream = MioStream::from_std(stream);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)?;
            streams.push(stream);
        }
        Ok(Reader { poll, streams })
    }

    /// Reads until `bytes` have arrived; returns (read calls that returned data, CPU µs).
    fn drain(&mut self, bytes: u64) -> Result<(u64, u64), BoxError> {
        let mut events = Events::with_capacity(1024);
        let mut buffer = vec![0u8; 64 * 1024];
        let (mut got, mut reads) = (0u64, 0u64);
        let cpu = thread_cpu_us()?;
        while got < bytes {
            self.poll.poll(&mut events, Some(Duration::from_secs(10)))?;
            if events.is_empty() {
                return Err(format!("reader: nothing for 10 s at {got} of {bytes} bytes").into());
            }
            for event in events.iter() {
                let stream = &mut self.streams[event.token().0];
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) => return Err("reader: a connection closed".into()),
                        Ok(n) => {
                            got += n as u64;
                            reads += 1;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok((reads, thread_cpu_us()? - cpu))
    }
}

/// One rate: the writer paces `rate` messages/s for `secs` on this thread while the reader
/// drains them on its own.
fn measure(
    writers: &mut [TcpStream],
    reader: &mut Reader,
    rate: u64,
    secs: u64,
) -> Result<Rung, BoxError> {
    let total = rate * secs;
    let per_tick = rate / 1000;
    let message = [b'x'; MESSAGE];
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| reader.drain(total * MESSAGE as u64));
        let start = Instant::now();
        let cpu = thread_cpu_us()?;
        // A stride coprime with common connection counts spreads consecutive messages.
        let stride = 7919;
        let (mut sent, mut next, mut tick) = (0u64, 0usize, 0u32);
        while sent < total {
            for _ in 0..per_tick.min(total - sent) {
                writers[next].write_all(&message)?;
                next = (next + stride) % writers.len();
                sent += 1;
            }
            tick += 1;
            let due = start + TICK * tick;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let send_cpu = thread_cpu_us()? - cpu;
        let elapsed = start.elapsed().as_secs_f64();
        let (reads, recv_cpu) = reading.join().map_err(|_| "reader panicked")??;
        Ok(Rung {
            rate,
            sent,
            secs: elapsed,
            send_us: send_cpu as f64 / sent as f64,
            recv_us: recv_cpu as f64 / sent as f64,
            reads,
        })
    })
}

/// This thread's user + system CPU time in µs (clock ticks of 10 ms).
fn thread_cpu_us() -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("unreadable /proc/thread-self/stat")?
        .1
        .split(' ')
        .collect();
    let ticks = |i: usize| -> Result<u64, BoxError> {
        Ok(fields.get(i).ok_or("short stat")?.parse::<u64>()?)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 after the command name.
    Ok((ticks(11)? + ticks(12)?) * 10_000)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
