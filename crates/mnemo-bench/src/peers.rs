//! Starting and stopping the servers under test on 127.0.0.1 with temporary data directories,
//! installing PostgreSQL 15 and Redis 7 from Debian packages when they are missing.

use anyhow::{bail, Context};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A server process, killed and its data directory removed on drop. Its log file lives in the
/// run's log directory (see [`LogDir`]), not in the data directory, so it outlives the server.
pub struct Server {
    /// Display name.
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The server's stdout and stderr.
    pub log: PathBuf,
    child: Child,
    dir: PathBuf,
}

impl Server {
    /// The server's temporary directory (mnemo's data directory is `data` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `None` while the process runs, else how it ended.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// One line on the server's state and the end of its log, for error reports.
    pub fn diagnose(&mut self) -> String {
        let state = match self.exit_status() {
            None => format!("{} (pid {}) is running", self.name, self.child.id()),
            Some(st) => format!("{} (pid {}) has exited: {st}", self.name, self.child.id()),
        };
        let tail = std::fs::read_to_string(&self.log)
            .map(|t| {
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(5)..].join("\n    ")
            })
            .unwrap_or_default();
        if tail.is_empty() {
            format!("{state}; log {} is empty", self.log.display())
        } else {
            format!("{state}; end of {}:\n    {tail}", self.log.display())
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Each server runs in a process group of its own: this also stops what it started (a
        // wrapper script's child, PostgreSQL's workers).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding every server's log for one run. Removed when the run succeeds
/// ([`LogDir::remove`]); kept, and named in the error, when it fails.
pub struct LogDir {
    /// The directory.
    pub path: PathBuf,
}

impl LogDir {
    /// A fresh `mnemo-bench-logs-PID` directory under the temporary directory.
    pub fn create() -> anyhow::Result<Self> {
        Ok(LogDir {
            path: temp_dir("logs")?,
        })
    }

    fn file(&self, name: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
        let path = self.path.join(format!("{name}.log"));
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok((path, f))
    }

    /// Deletes the logs (after a successful run).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn temp_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mnemo-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn wait_port(port: u16, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not open port {port} within 60 s")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Installs Debian packages if `probe` does not exist.
fn ensure_package(probe: &str, packages: &[&str]) -> anyhow::Result<()> {
    if Path::new(probe).exists() {
        return Ok(());
    }
    if !is_root() {
        bail!("{probe} is missing; install {packages:?} (needs root)");
    }
    eprintln!("installing {packages:?} from Debian packages…");
    let install = |update: bool| -> anyhow::Result<bool> {
        if update {
            Command::new("apt-get").args(["update", "-qq"]).status()?;
        }
        Ok(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success())
    };
    if !install(false)? && !install(true)? {
        bail!("apt-get install {packages:?} failed");
    }
    Ok(())
}

/// The `postgres` binary's version line.
pub fn postgres_version() -> String {
    version_of(&format!("{PG_BIN}/postgres"), "--version")
}

/// The `redis-server` binary's version line.
pub fn redis_version() -> String {
    version_of("redis-server", "--version")
}

fn version_of(bin: &str, flag: &str) -> String {
    Command::new(bin)
        .arg(flag)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Starts PostgreSQL 15 with `synchronous_commit=on` and `fsync=on` (the defaults, set
/// explicitly). Runs as the `postgres` user when started by root (initdb refuses root).
pub fn start_postgres(logs: &LogDir) -> anyhow::Result<Server> {
    ensure_package(&format!("{PG_BIN}/postgres"), &["postgresql-15"])?;
    let dir = temp_dir("postgres")?;
    let data = dir.join("data");
    let as_postgres = |bin: &str| -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", bin]);
            c
        } else {
            Command::new(bin)
        }
    };
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
    }
    let ok = as_postgres(&format!("{PG_BIN}/initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-U", "bench", "--auth=trust", "-E", "UTF8", "--no-locale"])
        .stdout(Stdio::null())
        .status()
        .context("running initdb")?
        .success();
    if !ok {
        bail!("initdb failed");
    }
    let port = free_port()?;
    let (log_path, log) = logs.file("postgres")?;
    if is_root() {
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&log_path)
            .status()?;
    }
    let mut child = as_postgres(&format!("{PG_BIN}/postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "synchronous_commit=on",
            "-c",
            "fsync=on",
            "-c",
            "shared_buffers=2GB",
            "-c",
            "max_connections=300",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting postgres")?;
    wait_port(port, "postgres", &mut child)?;
    Ok(Server {
        name: "postgres".into(),
        port,
        log: log_path,
        child,
        dir,
    })
}

/// Starts Redis 7 with the append-only file on and the given `appendfsync` policy.
pub fn start_redis(appendfsync: &str, logs: &LogDir) -> anyhow::Result<Server> {
    ensure_package("/usr/bin/redis-server", &["redis-server"])?;
    let dir = temp_dir(&format!("redis-{appendfsync}"))?;
    let port = free_port()?;
    let name = format!("redis-{appendfsync}");
    let (log_path, log) = logs.file(&name)?;
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(&dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--save",
            "",
            "--protected-mode",
            "no",
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting redis-server")?;
    wait_port(port, "redis", &mut child)?;
    Ok(Server {
        name,
        port,
        log: log_path,
        child,
        dir,
    })
}

/// Starts `mnemo serve` on its default local store.
pub fn start_mnemo(bin: &Path, logs: &LogDir) -> anyhow::Result<Server> {
    let dir = temp_dir("mnemo")?;
    let port = free_port()?;
    let (log_path, log) = logs.file("mnemo")?;
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_port(port, "mnemo", &mut child)?;
    Ok(Server {
        name: "mnemo".into(),
        port,
        log: log_path,
        child,
        dir,
    })
}
