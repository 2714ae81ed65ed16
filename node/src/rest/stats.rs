//! `/rest/stats/*`.

use super::http_util::{not_found, Answer, Call};

pub async fn route(_c: &Call) -> Answer {
    Err(not_found())
}
