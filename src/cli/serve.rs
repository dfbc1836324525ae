//! `semflow serve`: the engine behind its listeners (HTTP, Postgres, Flight SQL), one
//! admission budget for all of them, until Ctrl-C or SIGTERM.

use super::{shutdown_signal, ServeArgs};
use crate::engine::Engine;
use crate::error::{Error, Result};

pub(super) async fn run(args: ServeArgs) -> Result<()> {
    let engine = args.engine.engine()?;
    if let Some(init) = &args.init {
        let sql = crate::pipeline::spec::load(init)?;
        engine.run_sql(&sql).await?;
    }
    let token = args.api_token.clone().filter(|t| !t.is_empty());
    let password = args.pg_password.clone().filter(|p| !p.is_empty());
    let shared = shared_listener(&args)?;
    let pg = listener_at(&shared, "--pg-addr", &args.pg_addr, password)?;
    let flight = listener_at(&shared, "--flight-addr", &args.flight_addr, token.clone())?;
    let listener = listener_at(&shared, "--http-addr", &args.http_addr, token)?
        .ok_or_else(|| Error::InvalidArgument("--http-addr cannot be off".into()))?;
    let mut http = crate::serve::http::HttpOptions {
        listener,
        max_items: args.max_items.max(1),
        max_body_bytes: args.max_body_bytes.max(1),
        max_item_tokens: args.max_item_tokens,
        max_request_tokens: args.max_request_tokens,
        chat: None,
    };
    // Every listener is checked before anything loads or starts: a refused one must not
    // leave the others up.
    crate::serve::http::check_exposure(&http)?;
    if let Some(o) = &pg {
        crate::serve::pg::check_exposure(o)?;
    }
    if let Some(o) = &flight {
        crate::serve::flight::check_exposure(o)?;
    }
    http.chat = load_chat_model(&engine, args.chat_model.as_deref()).await?;
    serve_listeners(&engine, http, pg, flight).await
}

/// What `semflow serve`'s listeners share: TLS, the insecure opt-outs and one admission
/// budget (they share the model and the cores). Address and secret are each listener's.
fn shared_listener(args: &ServeArgs) -> Result<crate::serve::access::Listener> {
    Ok(crate::serve::access::Listener {
        insecure_no_auth: args.insecure_no_auth,
        tls: crate::tls::server_tls(args.tls_cert.as_ref(), args.tls_key.as_ref())?,
        insecure_no_tls: args.insecure_no_tls,
        admission: crate::serve::admission::Admission::new(args.max_concurrency, args.max_queue),
        ..Default::default()
    })
}

/// `shared` at the address `flag` gave (`value`), or `None` when it says `off`.
fn listener_at(
    shared: &crate::serve::access::Listener,
    flag: &str,
    value: &str,
    secret: Option<String>,
) -> Result<Option<crate::serve::access::Listener>> {
    if value == "off" {
        return Ok(None);
    }
    let addr = value.parse().map_err(|_| {
        Error::InvalidArgument(format!("{flag} {value}: expected HOST:PORT or off"))
    })?;
    Ok(Some(crate::serve::access::Listener {
        addr,
        secret,
        ..shared.clone()
    }))
}

/// Loads `--chat-model` when given (served at /v1/chat/completions).
async fn load_chat_model(
    engine: &Engine,
    spec: Option<&str>,
) -> Result<Option<std::sync::Arc<crate::serve::chat::ChatModel>>> {
    let Some(spec) = spec else { return Ok(None) };
    let load = engine.inference().config().load;
    let model = crate::serve::chat::ChatModel::load(spec, load).await?;
    eprintln!("chat model {} loaded", model.id);
    Ok(Some(std::sync::Arc::new(model)))
}

/// Serves every listener until Ctrl-C or SIGTERM.
async fn serve_listeners(
    engine: &Engine,
    http: crate::serve::http::HttpOptions,
    pg: Option<crate::serve::pg::PgOptions>,
    flight: Option<crate::serve::flight::FlightOptions>,
) -> Result<()> {
    use futures::FutureExt;
    let shutdown = shutdown_signal().shared();
    let scheme = if http.listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let http = crate::serve::http::serve(engine, http, shutdown.clone(), |a| {
        eprintln!("serving {scheme}://{a}")
    });
    let pg = async {
        let Some(o) = pg else { return Ok(()) };
        crate::serve::pg::serve(engine, o, shutdown.clone(), |a| {
            eprintln!(
                "serving postgres://{a} (psql -h {} -p {} -U semflow)",
                a.ip(),
                a.port()
            )
        })
        .await
    };
    let flight = async {
        let Some(o) = flight else { return Ok(()) };
        let scheme = if o.tls.is_some() { "grpc+tls" } else { "grpc" };
        crate::serve::flight::serve(engine, o, shutdown.clone(), |a| {
            eprintln!("serving {scheme}://{a} (Arrow Flight SQL)")
        })
        .await
    };
    tokio::try_join!(http, pg, flight).map(|_| ())
}
