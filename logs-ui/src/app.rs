//! The console page: the latest votes as terminal lines, filters, tallies and the route split.
//!
//! Everything on it is reachable without JavaScript: filters are a GET form, **Update** is a GET
//! form that reloads the same view, and older pages are links. With JavaScript the same controls
//! refresh in place, and the page refreshes itself every few seconds while "Live" is on.

use bandvote_domain::{CertifiedResult, LogTallies, LoggedVote, VotePage, VoteStatus};
use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::{
    SsrMode, StaticSegment,
    components::{Form, Route, Router, Routes},
    hooks::use_query_map,
};
use serde::{Deserialize, Serialize};

/// How often the page refreshes itself while "Live" is on.
pub const LIVE_REFRESH_MS: u64 = 2000;
const ROUTES: [&str; 3] = ["grpc", "http", "wasm"];

/// Which votes the page shows; empty means any. Mirrors the logs API's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub band: String,
    pub album: String,
    pub route: String,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.band.is_empty() && self.album.is_empty() && self.route.is_empty()
    }

    /// The filter as query parameters, leaving out the empty ones.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        [("band", &self.band), ("album", &self.album), ("route", &self.route)]
            .into_iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(name, value)| (name, value.trim().to_owned()))
            .collect()
    }

    /// This filter as a link's query string, with an optional cursor.
    fn href(&self, cursor: Option<&str>) -> String {
        let mut parts: Vec<String> =
            self.params().into_iter().map(|(name, value)| format!("{name}={}", encode(&value))).collect();
        if let Some(cursor) = cursor {
            parts.push(format!("cursor={}", encode(cursor)));
        }
        if parts.is_empty() { "/".to_owned() } else { format!("/?{}", parts.join("&")) }
    }
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[server]
pub async fn fetch_votes(filter: Filter, cursor: String) -> Result<VotePage, ServerFnError> {
    let api = expect_context::<crate::api::LogsApi>();
    api.votes(&filter, &cursor).await.map_err(ServerFnError::new)
}

#[server]
pub async fn fetch_tallies(filter: Filter) -> Result<LogTallies, ServerFnError> {
    let api = expect_context::<crate::api::LogsApi>();
    api.tallies(&filter).await.map_err(ServerFnError::new)
}

#[server]
pub async fn fetch_result() -> Result<Option<CertifiedResult>, ServerFnError> {
    let api = expect_context::<crate::api::LogsApi>();
    api.result().await.map_err(ServerFnError::new)
}

/// The HTML document around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <meta name="color-scheme" content="dark" />
                <meta name="description" content="The bandvote vote log: the latest votes, live." />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="console" href="/pkg/bandvote-logs-ui.css" />
        <Title text="Logs console · bandvote" />
        <Router>
            <Routes fallback=NotFound>
                // Rendered whole before it is sent, so the page is complete without JavaScript.
                <Route path=StaticSegment("") view=Console ssr=SsrMode::Async />
            </Routes>
        </Router>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    view! {
        <main class="page">
            <h1>"Not found"</h1>
            <p>"There is no such page. " <a href="/">"Back to the logs console"</a></p>
        </main>
    }
}

#[component]
fn Console() -> impl IntoView {
    let query = use_query_map();
    let filter = Memo::new(move |_| {
        let query = query.read();
        let value = |name: &str| query.get(name).map(|v| v.trim().to_owned()).unwrap_or_default();
        Filter { band: value("band"), album: value("album"), route: value("route") }
    });
    let cursor = Memo::new(move |_| query.read().get("cursor").unwrap_or_default());
    let refresh = RwSignal::new(0_u64);
    let live = RwSignal::new(true);

    let votes = Resource::new(
        move || (filter.get(), cursor.get(), refresh.get()),
        |(filter, cursor, _)| fetch_votes(filter, cursor),
    );
    let tallies = Resource::new(move || (filter.get(), refresh.get()), |(filter, _)| fetch_tallies(filter));
    let result = Resource::new(move || refresh.get(), |_| fetch_result());

    // In the browser only: refresh in place while "Live" is on.
    Effect::new(move |_| {
        let handle = set_interval_with_handle(
            move || {
                if live.get_untracked() {
                    refresh.update(|n| *n += 1);
                }
            },
            std::time::Duration::from_millis(LIVE_REFRESH_MS),
        );
        if let Ok(handle) = handle {
            on_cleanup(move || handle.clear());
        }
    });

    view! {
        <main class="page">
            <header class="top">
                <h1>"Logs console"</h1>
                <p class="subtitle">"bandvote · the latest votes of the Guatemalan band contest, newest first"</p>
            </header>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    let result = result.await.ok().flatten();
                    view! { <ResultBanner result=result /> }
                })}
            </Transition>
            <div class="layout">
                <section class="terminal-panel" aria-labelledby="log-heading">
                    <div class="toolbar">
                        <h2 id="log-heading" class="visually-hidden">"Latest votes"</h2>
                        // Without JavaScript this reloads the same view; with it, it refreshes in place.
                        <form
                            method="get"
                            action="/"
                            class="update"
                            on:submit=move |ev| {
                                ev.prevent_default();
                                refresh.update(|n| *n += 1);
                            }
                        >
                            {move || {
                                filter
                                    .get()
                                    .params()
                                    .into_iter()
                                    .map(|(name, value)| view! { <input type="hidden" name=name value=value /> })
                                    .collect_view()
                            }}
                            <button type="submit" id="update">"Update"</button>
                        </form>
                        <label class="live">
                            <input
                                type="checkbox"
                                id="live"
                                prop:checked=move || live.get()
                                on:change=move |ev| live.set(event_target_checked(&ev))
                            />
                            " Live (every " {LIVE_REFRESH_MS / 1000} " s)"
                        </label>
                    </div>
                    <Transition fallback=|| view! { <p class="terminal">"> loading…"</p> }>
                        {move || Suspend::new(async move {
                            let page = votes.await;
                            view! { <Log page=page filter=filter.get() cursor=cursor.get() /> }
                        })}
                    </Transition>
                </section>
                <aside class="side">
                    <Filters filter=filter />
                    <Transition fallback=|| view! { <p>"Loading the tallies…"</p> }>
                        {move || Suspend::new(async move {
                            let tallies = tallies.await;
                            view! { <Tallies tallies=tallies /> }
                        })}
                    </Transition>
                </aside>
            </div>
        </main>
    }
}

/// "Voting closed" and the final result, once the certified result of a closed contest is out.
#[component]
fn ResultBanner(result: Option<CertifiedResult>) -> impl IntoView {
    let result = result.filter(|r| r.status == "closed")?;
    let title = match &result.contest {
        Some(name) => format!("Voting closed · {name}"),
        None => "Voting closed".to_owned(),
    };
    let refused = (result.refused > 0).then(|| format!(", {} refused", result.refused));
    Some(view! {
        <section class="result" id="result" aria-labelledby="result-heading">
            <h2 id="result-heading">{title}</h2>
            <p>
                {format!("Final result: {} votes counted", result.counted)}
                {refused}
                {result.window.closes.clone().map(|closes| format!(" (voting closed at {closes})"))}
            </p>
            <ol class="result-bands">
                {result
                    .bands
                    .into_iter()
                    .map(|band| view! { <li><span class="band">{band.name}</span> {format!(" {} votes", band.votes)}</li> })
                    .collect_view()}
            </ol>
            <p class="digest">"Log digest " <code>{result.digest}</code></p>
        </section>
    })
}

#[component]
fn Log(page: Result<VotePage, ServerFnError>, filter: Filter, cursor: String) -> impl IntoView {
    let page = match page {
        Ok(page) => page,
        Err(err) => {
            return view! {
                <div class="terminal" id="log">
                    <p class="line">"> Logs console - bandvote"</p>
                    <p class="line error" role="alert">"> error - " {error_text(&err)}</p>
                    <p class="line">"> Update tries again."</p>
                </div>
            }
            .into_any();
        }
    };
    let shown = page.votes.len();
    let empty = if !page.votes.is_empty() {
        None
    } else if filter.is_empty() && cursor.is_empty() {
        Some("> no votes logged yet: votes appear here a moment after they are cast")
    } else {
        Some("> no votes match these filters")
    };
    let older = page.next_cursor.as_deref().map(|next| filter.href(Some(next)));
    let newest = (!cursor.is_empty()).then(|| filter.href(None));
    view! {
        <div class="terminal" id="log">
            <p class="line">"> Logs console - bandvote"</p>
            {empty.map(|text| view! { <p class="line empty" id="empty">{text}</p> })}
            <ol class="lines" aria-label="Votes, newest first">
                {page.votes.into_iter().map(|vote| view! { <VoteLine vote=vote /> }).collect_view()}
            </ol>
        </div>
        <nav class="pager" aria-label="Pages">
            <span class="count" id="shown">{format!("{shown} shown")}</span>
            {newest.map(|href| view! { <a href=href>"Newest"</a> })}
            {older.map(|href| view! { <a href=href id="older" rel="next">"Older votes"</a> })}
        </nav>
    }
    .into_any()
}

/// One vote as the original console showed it: `> date - time - data`.
#[component]
fn VoteLine(vote: LoggedVote) -> impl IntoView {
    let (date, time) = split_timestamp(&vote.received_at);
    let rank = format!("{}", vote.rank);
    // A vote the contest's rule refused is in the log, marked, and not in the tallies.
    let refused = (vote.status == VoteStatus::Refused).then(|| vote.reason.clone().unwrap_or_default());
    view! {
        <li class="line vote" data-vote-id=vote.vote_id.clone()>
            <span aria-hidden="true">"> "</span>
            <time datetime=vote.received_at.clone()>{date} " - " {time}</time>
            " - "
            <span class="band">{vote.name}</span>
            " / "
            <span class="album">{vote.album}</span>
            {format!(" ({}) rank {rank} ", vote.year)}
            <span class=format!("route route-{}", vote.route)>{vote.route.to_string()}</span>
            {refused.map(|reason| view! { " " <span class="refused">{format!("refused: {reason}")}</span> })}
        </li>
    }
}

/// `2026-11-27T00:12:59.123Z` → (`2026-11-27`, `00:12:59 UTC`).
fn split_timestamp(rfc3339: &str) -> (String, String) {
    match rfc3339.split_once('T') {
        Some((date, rest)) => {
            let time = rest.trim_end_matches('Z');
            let time = time.split('.').next().unwrap_or(time);
            (date.to_owned(), format!("{time} UTC"))
        }
        None => (rfc3339.to_owned(), String::new()),
    }
}

fn error_text(err: &ServerFnError) -> String {
    match err {
        ServerFnError::ServerError(message) => message.clone(),
        other => format!("the console's server did not answer: {other}"),
    }
}

#[component]
fn Filters(filter: Memo<Filter>) -> impl IntoView {
    view! {
        <section class="card" aria-labelledby="filters-heading">
            <h2 id="filters-heading">"Filters"</h2>
            <Form method="GET" action="/">
                <div class="field">
                    <label for="band">"Band"</label>
                    <input id="band" name="band" type="text" maxlength="100" autocomplete="off"
                        placeholder="any band" prop:value=move || filter.get().band />
                </div>
                <div class="field">
                    <label for="album">"Album"</label>
                    <input id="album" name="album" type="text" maxlength="100" autocomplete="off"
                        placeholder="any album of the band" prop:value=move || filter.get().album />
                </div>
                <div class="field">
                    <label for="route">"Route"</label>
                    <select id="route" name="route">
                        <option value="" selected=move || filter.get().route.is_empty()>"any route"</option>
                        {ROUTES
                            .into_iter()
                            .map(|route| {
                                view! {
                                    <option value=route selected=move || filter.get().route == route>{route}</option>
                                }
                            })
                            .collect_view()}
                    </select>
                </div>
                <div class="actions">
                    <button type="submit" id="apply">"Apply"</button>
                    <a href="/" class="clear">"Clear"</a>
                </div>
            </Form>
        </section>
    }
}

#[component]
fn Tallies(tallies: Result<LogTallies, ServerFnError>) -> impl IntoView {
    let tallies = match tallies {
        Ok(tallies) => tallies,
        Err(err) => {
            return view! {
                <section class="card" aria-labelledby="tallies-heading">
                    <h2 id="tallies-heading">"Tallies"</h2>
                    <p class="error" role="alert">{error_text(&err)}</p>
                </section>
            }
            .into_any();
        }
    };
    let total = tallies.total;
    let share = move |votes: u64| if total == 0 { 0.0 } else { votes as f64 * 100.0 / total as f64 };
    let split_label = tallies.routes.iter().map(|r| format!("{} {}", r.route, r.votes)).collect::<Vec<_>>().join(", ");
    let band_max = tallies.bands.iter().map(|b| b.votes).max().unwrap_or(0).max(1);
    let album_max = tallies.albums.iter().map(|a| a.votes).max().unwrap_or(0).max(1);
    view! {
        <section class="card" aria-labelledby="tallies-heading">
            <h2 id="tallies-heading">"Tallies"</h2>
            <p class="total" id="total">{format!("{total} votes logged")}</p>
            {tallies.as_of.clone().map(|as_of| {
                let (_, time) = split_timestamp(&as_of);
                view! {
                    <p class="as-of" id="tallies-as-of">
                        "as of " <time datetime=as_of>{time}</time>
                    </p>
                }
            })}
            <h3>"Routes"</h3>
            <div class="split" role="img" aria-label=split_label>
                {tallies
                    .routes
                    .iter()
                    .map(|r| view! { <span class=format!("segment route-{}", r.route) style:width=format!("{:.2}%", share(r.votes))></span> })
                    .collect_view()}
            </div>
            <ul class="legend" id="routes">
                {tallies
                    .routes
                    .iter()
                    .map(|r| {
                        view! {
                            <li>
                                <span class=format!("swatch route-{}", r.route) aria-hidden="true"></span>
                                {format!("{} {} ({:.0}%)", r.route, r.votes, share(r.votes))}
                            </li>
                        }
                    })
                    .collect_view()}
            </ul>
            <h3>"Votes per band"</h3>
            <Bars
                id="bands"
                rows=tallies.bands.iter().map(|b| (b.name.clone(), b.votes, b.votes as f64 * 100.0 / band_max as f64)).collect()
            />
            <h3>"Votes per album"</h3>
            <Bars
                id="albums"
                rows=tallies
                    .albums
                    .iter()
                    .map(|a| (format!("{} / {}", a.name, a.album), a.votes, a.votes as f64 * 100.0 / album_max as f64))
                    .collect()
            />
        </section>
    }
    .into_any()
}

/// A horizontal bar chart: (label, votes, bar length in percent).
#[component]
fn Bars(id: &'static str, rows: Vec<(String, u64, f64)>) -> impl IntoView {
    if rows.is_empty() {
        return view! { <p class="muted">"Nothing counted yet."</p> }.into_any();
    }
    view! {
        <ul class="bars" id=id>
            {rows
                .into_iter()
                .map(|(label, votes, length)| {
                    view! {
                        <li>
                            <span class="label">{label}</span>
                            <span class="bar" aria-hidden="true"><span style:width=format!("{length:.2}%")></span></span>
                            <span class="votes">{votes}</span>
                        </li>
                    }
                })
                .collect_view()}
        </ul>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_filter() {
        let filter = Filter { band: "Alux Nahual".into(), album: "".into(), route: "grpc".into() };
        assert_eq!(filter.href(None), "/?band=Alux%20Nahual&route=grpc");
        assert_eq!(filter.href(Some("MTIz")), "/?band=Alux%20Nahual&route=grpc&cursor=MTIz");
        assert_eq!(Filter::default().href(None), "/");
        assert_eq!(encode("Maíz & co"), "Ma%C3%ADz%20%26%20co");
    }

    #[test]
    fn timestamps_split_into_date_and_time() {
        assert_eq!(split_timestamp("2026-11-27T00:12:59.123Z"), ("2026-11-27".to_owned(), "00:12:59 UTC".to_owned()));
    }
}
