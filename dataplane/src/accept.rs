//! Accepting connections and spreading them over the cores, round-robin: each connection then
//! lives on one core for its whole life (its ring does all its IO).

use std::future::Future;

use crate::runtime::{self, Listener, Stream};

/// Accepts forever. `serve` runs on the chosen core (it is sent there, so it must be `Send`);
/// `refuse` lets the caller close new connections instead (e.g. after cutover).
pub async fn round_robin<S, Fut>(listener: Listener, serve: S, refuse: impl Fn() -> bool)
where
    S: Fn(Stream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let handle = runtime::core_handle();
    let mut next = 0usize;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                runtime::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if refuse() {
            stream.shutdown();
            continue;
        }
        let core = next % handle.cores();
        next += 1;
        let serve = serve.clone();
        if core == runtime::current_core() {
            runtime::spawn(serve(stream)).detach();
            continue;
        }
        match stream.into_owned_fd() {
            Ok(fd) => handle.post(core, move || {
                runtime::spawn(serve(Stream::from_owned_fd(fd))).detach()
            }),
            Err(stream) => runtime::spawn(serve(stream)).detach(),
        }
    }
}
