//! nginx proxying the same WebSockets one-to-one: the industry-standard
//! baseline for "what does a proxy in the path cost".

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

pub(crate) struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub(crate) fn binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"].into_iter().map(PathBuf::from).find(|p| p.exists())
}

impl Nginx {
    /// One worker process, like the gateway with one worker thread.
    pub(crate) async fn start(upstream_port: u16) -> anyhow::Result<Self> {
        Self::start_with_workers(upstream_port, 1).await
    }

    pub(crate) async fn start_with_workers(upstream_port: u16, workers: usize) -> anyhow::Result<Self> {
        let bin = binary().context("nginx is not installed (scripts/bench installs it)")?;
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; worker_processes {workers}; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
               fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                   proxy_pass http://127.0.0.1:{upstream_port};\n      proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n\
                   proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(bin).args(["-c"]).arg(&path).kill_on_drop(true).spawn()?;
        // Ready when the port accepts.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(Self { child, port, _dir: dir });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("nginx did not start listening")
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/opamp", self.port)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// A fast shutdown (SIGTERM) lets the master stop its worker; a SIGKILL
    /// would leave the worker running, holding the bench's stdout open.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
