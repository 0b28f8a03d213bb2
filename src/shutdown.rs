//! Signals: every long-running command ends on SIGTERM or Ctrl-C, finishing what it holds;
//! `serve` over TLS reloads its certificate on SIGHUP.

/// Resolves on the first SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
    tracing::info!("shutting down");
}

/// SIGHUPs, each a request to read the certificate files again. Registered before `serve`
/// announces its address, so a SIGHUP from then on is never the default (which ends the
/// process). `None` where there are no such signals.
pub struct Hangups {
    #[cfg(unix)]
    signals: tokio::signal::unix::Signal,
}

impl Hangups {
    pub fn register() -> Option<Self> {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signals) => Some(Self { signals }),
                Err(error) => {
                    tracing::warn!(%error, "SIGHUP cannot reload the TLS certificate");
                    None
                }
            }
        }
        #[cfg(not(unix))]
        None
    }

    /// The next SIGHUP; `None` once no more can come.
    pub async fn next(&mut self) -> Option<()> {
        #[cfg(unix)]
        return self.signals.recv().await;
        #[cfg(not(unix))]
        None
    }
}
