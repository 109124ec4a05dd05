//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, `pg_ctl` on a free loopback port with its socket in that
//! directory, stopped and removed when dropped.
//!
//! The binaries are Debian's (`apt-get install postgresql`, which
//! `./scripts/test.sh` does when they are missing): `$CHOREO_PG_BIN` if set,
//! else the newest `/usr/lib/postgresql/*/bin`, else `initdb` on the `PATH`.
//! `initdb` refuses to run as root, so as root the cluster belongs to the
//! `postgres` user and every server command runs through
//! `runuser -u postgres --`; as any other user it runs as that user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How to get the binaries, for the failure message.
pub const INSTALL_POSTGRES: &str = "apt-get install postgresql";

/// A running throwaway cluster. Stopped (`pg_ctl stop -m immediate`) and its
/// directory removed when dropped.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

/// The directory of the PostgreSQL server binaries; panics with the install
/// command when there is none (tests must not pass silently without it).
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CHOREO_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed, and these tests need a real PostgreSQL: install them with `{INSTALL_POSTGRES}` (./scripts/test.sh does this when they are missing), or point CHOREO_PG_BIN at their directory"
            )
        })
}

/// Whether this process runs as root (user id 0), read from `/proc`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

impl Postgres {
    /// Creates and starts a cluster; the superuser is `postgres`, trusted
    /// without a password on loopback and on the socket.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let as_postgres = is_root();
        let base = std::env::temp_dir().join(format!(
            "choreo-pg-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&base).expect("cluster directory");
        let mut pg = Postgres {
            bin,
            dir: base,
            port: 0,
            as_postgres,
            running: false,
        };
        if as_postgres {
            pg.checked(
                "chown",
                Command::new("chown").arg("postgres:postgres").arg(&pg.dir),
            );
        }
        let mut initdb = pg.command("initdb");
        let data = pg.data();
        pg.checked(
            "initdb",
            initdb.arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
        );
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = crate::free_port();
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The cluster's directory (data, log and socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `postgres://` URL for database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (fails the test if it cannot).
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs `sql` with psql against `db` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin_or_path("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no checkpoint,
    /// clients cut off, recovery on the next start), as a crash would.
    pub fn stop_immediately(&mut self) {
        let mut cmd = self.command("pg_ctl");
        let data = self.data();
        self.checked(
            "pg_ctl stop",
            cmd.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]),
        );
        self.running = false;
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        assert!(!self.running, "stop it first");
        // The port was ours a moment ago; another process may take it in
        // between, which fails the test with pg_ctl's log.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("PostgreSQL did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut cmd = self.command("pg_ctl");
        let data = self.data();
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        let out = run(&mut cmd)?;
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    fn bin_or_path(&self, name: &str) -> PathBuf {
        let p = self.bin.join(name);
        if p.is_file() { p } else { PathBuf::from(name) }
    }

    /// A server command, as the `postgres` user when we are root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin_or_path(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn checked(&self, what: &str, cmd: &mut Command) {
        match run(cmd) {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
