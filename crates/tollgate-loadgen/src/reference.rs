//! The reference proxy: nginx forwarding the same requests to the same mock,
//! measured in the same run, on the same CPU as Tollgate, so that a step's
//! figures can be read against the least a reverse proxy costs on this
//! machine: nginx parses each request's head, forwards it over a kept-alive
//! upstream connection and relays the answer unbuffered, and does nothing
//! else (no access log, no body parse, no authentication, no limits). What
//! Tollgate costs beyond that is its own work; what both cost is the
//! machine's (two loopback hops, waking a process per request).
//!
//! nginx runs as one process (`master_process off`), so its CPU is that
//! process's, read like Tollgate's. It is found on `PATH` or at
//! `/usr/sbin/nginx` (Debian's package); without it the reference steps are
//! left out and the report says so.

use crate::procs::{self, Proc, ProcsError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Debian's package puts nginx (not on a non-root user's `PATH`).
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";

/// nginx, if this machine has it.
pub fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"));
    on_path
        .chain(std::iter::once(PathBuf::from(DEBIAN_NGINX)))
        .find(|p| p.is_file())
}

/// The configuration: one process, listening on `port`, forwarding
/// everything to the mock at `upstream_port` over kept-alive HTTP/1.1
/// connections, unbuffered (a stream's frames pass as they come); every
/// file it writes is under `dir`.
pub fn config(dir: &Path, port: u16, upstream_port: u16) -> String {
    let d = dir.display();
    format!(
        "# The benchmark's reference proxy (tollgate-loadgen, reference.rs).
master_process off;
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/nginx-body;
  proxy_temp_path {d}/nginx-proxy;
  fastcgi_temp_path {d}/nginx-fastcgi;
  uwsgi_temp_path {d}/nginx-uwsgi;
  scgi_temp_path {d}/nginx-scgi;
  upstream mock {{
    server 127.0.0.1:{upstream_port};
    keepalive 1024;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }}
  }}
}}
"
    )
}

/// A running reference proxy.
pub struct Reference {
    pub proc: Proc,
    pub port: u16,
    pub binary: PathBuf,
}

/// Writes the configuration into `dir` and starts nginx on `cpus`, in
/// front of the mock at `upstream_port`.
pub async fn start(
    nginx: &Path,
    dir: &Path,
    upstream_port: u16,
    cpus: Option<&str>,
    ready_within: Duration,
) -> Result<Reference, ProcsError> {
    let port = procs::free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, port, upstream_port)).map_err(|source| ProcsError::Spawn {
        what: "reference proxy (nginx): its configuration".into(),
        source,
    })?;
    let args = [
        // The prefix and the error log given on the command line, so nginx
        // opens nothing outside `dir` before it reads the configuration.
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        dir.join("nginx-error.log").display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ];
    let mut proc = Proc::spawn(
        "reference proxy (nginx)",
        nginx,
        &args,
        &[],
        cpus,
        &dir.join("nginx.log"),
    )?;
    proc.wait_ready(port, ready_within).await?;
    Ok(Reference {
        proc,
        port,
        binary: nginx.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_keeps_every_file_in_its_directory_and_forwards_unbuffered() {
        let c = config(Path::new("/tmp/x"), 8001, 9001);
        assert!(c.contains("listen 127.0.0.1:8001;"));
        assert!(c.contains("server 127.0.0.1:9001;"));
        assert!(
            c.contains("master_process off;"),
            "one process: its CPU is read from its pid"
        );
        assert!(
            c.contains("proxy_buffering off;"),
            "a stream's frames pass as they come"
        );
        assert!(
            c.contains("keepalive 1024;"),
            "upstream connections are reused, as Tollgate's are"
        );
        // Every absolute path (not the location `/`) is under the directory.
        let paths: Vec<&str> = c
            .split_whitespace()
            .filter(|w| w.len() > 1 && w.starts_with('/'))
            .collect();
        assert_eq!(paths.len(), 7, "{paths:?}");
        for p in paths {
            assert!(p.starts_with("/tmp/x/"), "{p}");
        }
    }
}
