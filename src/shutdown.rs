//! Process signals: the stop signal (SIGINT or SIGTERM, whichever comes first), and SIGXFSZ,
//! which must not kill the relay when a file-size limit is hit.

/// Resolves when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Keeps SIGXFSZ from killing the process: with a file-size limit reached (a full disk, a quota)
/// a write then fails with an error, the store answers 503, and the relay recovers once space
/// returns. The handler is in place when this returns; call it once, inside the runtime.
///
/// # Errors
/// The signal handler cannot be installed.
pub fn survive_file_size_limits() -> std::io::Result<()> {
    let mut signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))?;
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            tracing::error!("a write went past the file-size limit; the store answers 503 until there is room");
        }
    });
    Ok(())
}
