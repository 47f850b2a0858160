//! A PostgreSQL server a test owns: initialised in a temporary directory, on a port of its own,
//! with TLS when asked, stopped and started again at will. It needs the PostgreSQL server
//! programs (`initdb`, `pg_ctl`; Debian's `postgresql` package), so the tests that use it are
//! ignored by a plain `cargo test` and run by `.ci/run`. Run as root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Why tests that start their own PostgreSQL server are ignored by a plain `cargo test`.
pub(crate) const NEEDS_PG_SERVER: &str = "needs the PostgreSQL server programs (initdb, pg_ctl): .ci/run runs it";

/// A server's TLS files: a CA and a certificate it signed for `localhost`.
pub(crate) struct ServerTls {
    /// The CA certificate, PEM: what a client's `sslrootcert` names.
    pub(crate) ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl ServerTls {
    /// A new CA, and a server certificate for `localhost` signed by it.
    pub(crate) fn for_localhost() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
        Self { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A running server; stopped (immediately) when dropped.
pub(crate) struct PgServer {
    /// Where its data and socket live.
    _dir: TempDir,
    data: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub(crate) port: u16,
}

impl PgServer {
    /// Initialises and starts a server, with TLS from `tls` (`ssl = on`) or without (`ssl = off`).
    pub(crate) fn start(tls: Option<&ServerTls>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        set_mode(&data, 0o700);
        give_to_server_user(&data);
        run(server_command("initdb").args([
            "-D",
            path(&data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            path(&data)
        );
        match tls {
            Some(tls) => {
                for (file, pem) in [("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)] {
                    std::fs::write(data.join(file), pem).unwrap();
                    set_mode(&data.join(file), 0o600);
                }
                give_to_server_user(&data);
                conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            }
            None => conf.push_str("ssl = off\n"),
        }
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        let server = Self { _dir: dir, data, port };
        server.resume();
        server
    }

    /// `postgres://postgres@{host}:{port}/postgres`, with `query` if not empty.
    pub(crate) fn url(&self, host: &str, query: &str) -> String {
        let query = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("postgres://postgres@{host}:{}/postgres{query}", self.port)
    }

    /// Stops the server (fast shutdown: sessions are ended, nothing is lost).
    pub(crate) fn stop(&self) {
        run(self.pg_ctl().args(["-m", "fast", "stop"]));
    }

    /// Starts the server again after [`PgServer::stop`] (and at first), waiting until it accepts
    /// connections.
    pub(crate) fn resume(&self) {
        let log = self.data.join("server.log");
        run(self.pg_ctl().args(["-w", "-t", "60", "-l", path(&log), "start"]));
    }

    fn pg_ctl(&self) -> Command {
        let mut command = server_command("pg_ctl");
        command.args(["-D", path(&self.data)]);
        command
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).output();
    }
}

/// A PostgreSQL server program, run as the `postgres` user when the test runs as root.
fn server_command(program: &str) -> Command {
    let program = bin_dir().join(program);
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Where the server programs are: `pg_config --bindir`, else Debian's newest
/// `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(Result::ok).map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().filter(|dir| dir.join("initdb").exists()).expect(NEEDS_PG_SERVER)
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e} ({NEEDS_PG_SERVER})"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn give_to_server_user(dir: &Path) {
    if nix::unistd::geteuid().is_root() {
        run(Command::new("chown").args(["-R", "postgres:postgres", path(dir)]));
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
