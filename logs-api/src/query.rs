//! Query strings, checked at the edge: each endpoint names the parameters it takes, and each
//! parameter is parsed into a bounded value. Unknown or repeated parameters are refused rather than
//! ignored, so a typo (`?bnad=`) is never silently the whole log.

use std::collections::BTreeMap;

use bandvote_domain::{LogId, Route, ballot::MAX_NAME_CHARS};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// How many votes a page has when `limit` is not given: the original console showed 20.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// A parameter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {problem}")]
pub struct ParamError {
    pub parameter: String,
    pub problem: String,
}

impl ParamError {
    fn new(parameter: &str, problem: impl Into<String>) -> Self {
        ParamError { parameter: parameter.to_owned(), problem: problem.into() }
    }
}

/// Which votes: every field is an exact match, and absent means any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    pub band: Option<String>,
    pub album: Option<String>,
    pub route: Option<Route>,
}

/// A position in the "newest first" order: the last vote of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub received_at_ms: i64,
    /// The vote's log id, the tie-breaker.
    pub id: LogId,
}

impl Cursor {
    /// The opaque text a client passes back as `cursor`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.received_at_ms, self.id.as_str()))
    }

    pub fn decode(text: &str) -> Result<Self, String> {
        const NOT_OURS: &str = "not a cursor from this API; pass the next_cursor of a previous page";
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| NOT_OURS.to_owned())?;
        let text = String::from_utf8(bytes).map_err(|_| NOT_OURS.to_owned())?;
        let (millis, vote_id) = text.split_once(':').ok_or_else(|| NOT_OURS.to_owned())?;
        let received_at_ms = millis.parse::<i64>().ok().filter(|ms| *ms >= 0).ok_or_else(|| NOT_OURS.to_owned())?;
        let id = LogId::parse(vote_id).map_err(|_| NOT_OURS.to_owned())?;
        Ok(Cursor { received_at_ms, id })
    }
}

/// `GET /votes`: which votes, how many, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub filter: Filter,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

const PAGE_PARAMETERS: &[&str] = &["limit", "cursor", "band", "album", "route"];
const TALLY_PARAMETERS: &[&str] = &["band", "album", "route"];

impl LogQuery {
    pub fn parse(query: Option<&str>, max_page_size: u32) -> Result<Self, ParamError> {
        let mut params = Params::parse(query, PAGE_PARAMETERS)?;
        let limit = match params.take("limit") {
            None => DEFAULT_PAGE_SIZE.min(max_page_size),
            Some(text) => text.parse::<u32>().ok().filter(|n| (1..=max_page_size).contains(n)).ok_or_else(|| {
                ParamError::new("limit", format!("must be a whole number from 1 to {max_page_size}, got {text:?}"))
            })?,
        };
        let cursor = params
            .take("cursor")
            .map(|text| Cursor::decode(&text).map_err(|p| ParamError::new("cursor", p)))
            .transpose()?;
        let filter = Filter::from_params(&mut params)?;
        Ok(LogQuery { filter, limit, cursor })
    }
}

impl Filter {
    /// `GET /tallies`: the filter alone.
    pub fn parse(query: Option<&str>) -> Result<Self, ParamError> {
        Filter::from_params(&mut Params::parse(query, TALLY_PARAMETERS)?)
    }

    fn from_params(params: &mut Params) -> Result<Self, ParamError> {
        let band = params.take("band").map(|text| name("band", &text)).transpose()?;
        let album = params.take("album").map(|text| name("album", &text)).transpose()?;
        if album.is_some() && band.is_none() {
            return Err(ParamError::new("album", "needs band too: an album is named within its band"));
        }
        let route = params
            .take("route")
            .map(|text| text.parse::<Route>().map_err(|why| ParamError::new("route", why)))
            .transpose()?;
        Ok(Filter { band, album, route })
    }
}

/// A band or album name as the log stores it: trimmed, not empty, at most `MAX_NAME_CHARS`.
fn name(parameter: &str, text: &str) -> Result<String, ParamError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ParamError::new(parameter, "must not be empty"));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(ParamError::new(parameter, format!("must be at most {MAX_NAME_CHARS} characters, got {chars}")));
    }
    Ok(trimmed.to_owned())
}

/// The decoded parameters of one query string, each given at most once.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, ParamError> {
        let mut params = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !known.contains(&key.as_ref()) {
                return Err(ParamError::new(
                    &key,
                    format!("unknown parameter; this endpoint takes {}", known.join(", ")),
                ));
            }
            if params.insert(key.clone().into_owned(), value.into_owned()).is_some() {
                return Err(ParamError::new(&key, "given more than once"));
            }
        }
        Ok(Params(params))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(query: &str) -> Result<LogQuery, ParamError> {
        LogQuery::parse(Some(query), 100)
    }

    fn problem(query: &str) -> (String, String) {
        let err = page(query).expect_err(query);
        (err.parameter, err.problem)
    }

    #[test]
    fn defaults_to_the_latest_twenty() {
        let query = LogQuery::parse(None, 100).unwrap();
        assert_eq!(query, LogQuery { filter: Filter::default(), limit: 20, cursor: None });
        assert_eq!(LogQuery::parse(Some(""), 5).unwrap().limit, 5, "the default never passes the maximum");
    }

    #[test]
    fn reads_every_parameter() {
        let cursor = Cursor { received_at_ms: 1_764_201_600_123, id: LogId::parse("voter-9/v-1").unwrap() };
        let query =
            page(&format!("limit=7&band=Alux%20Nahual&album=+Conquista+&route=grpc&cursor={}", cursor.encode()))
                .unwrap();
        assert_eq!(query.limit, 7);
        assert_eq!(query.filter.band.as_deref(), Some("Alux Nahual"));
        assert_eq!(query.filter.album.as_deref(), Some("Conquista"), "names are trimmed like the log's");
        assert_eq!(query.filter.route, Some(Route::Grpc));
        assert_eq!(query.cursor, Some(cursor));
    }

    #[test]
    fn refuses_bad_limits() {
        for bad in ["0", "101", "-1", "ten", "1.5", ""] {
            let (parameter, problem) = problem(&format!("limit={bad}"));
            assert_eq!(parameter, "limit");
            assert!(problem.contains("from 1 to 100"), "{problem}");
        }
        assert_eq!(page("limit=100").unwrap().limit, 100);
    }

    #[test]
    fn refuses_unknown_and_repeated_parameters() {
        let (parameter, message) = problem("bnad=x");
        assert_eq!(parameter, "bnad");
        assert!(message.contains("unknown parameter") && message.contains("band"), "{message}");
        assert_eq!(problem("band=a&band=b"), ("band".into(), "given more than once".into()));
        assert_eq!(Filter::parse(Some("limit=5")).unwrap_err().parameter, "limit", "tallies take no limit");
    }

    #[test]
    fn operators_are_only_text() {
        // Query operators and JSON are just names that no band has; they never become operators.
        let query = page("band=%7B%22%24ne%22%3A%22%22%7D&album=%24gt").unwrap();
        assert_eq!(query.filter.band.as_deref(), Some(r#"{"$ne":""}"#));
        assert_eq!(query.filter.album.as_deref(), Some("$gt"));
        assert_eq!(problem("band[$ne]=x").0, "band[$ne]", "bracket syntax is an unknown parameter");
    }

    #[test]
    fn refuses_bad_filters() {
        assert_eq!(problem("band=%20%20"), ("band".into(), "must not be empty".into()));
        assert!(problem(&format!("band={}", "x".repeat(101))).1.contains("at most 100"));
        assert!(problem("album=Conquista").1.contains("needs band"));
        assert!(problem("route=ftp").1.contains("grpc, http, wasm"));
    }

    #[test]
    fn refuses_cursors_it_did_not_give() {
        for bad in ["%%%", "bm90LWEtY3Vyc29y", "LTE6dg", "MTIzOnYgMQ"] {
            let (parameter, problem) = problem(&format!("cursor={bad}"));
            assert_eq!(parameter, "cursor");
            assert!(problem.contains("next_cursor"), "{problem}");
        }
    }
}
