//! The URL of a work queue (`amqp://.../vhost?queue=NAME&prefetch=N`): which parameters are
//! mitto's and what the AMQP client gets. Read by the configuration check and by both sides of
//! the `worker` module, so it depends on neither.

/// The query parameters of a work-queue URL that are mitto's, not the AMQP client's.
const OWN_PARAMS: [&str; 2] = ["queue", "prefetch"];

fn params(url: &str) -> impl Iterator<Item = (&str, &str)> {
    url.split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The queue named by `?queue=` in a work-queue URL.
pub fn queue_of(url: &str) -> Result<String, String> {
    match params(url).find(|(k, _)| *k == "queue") {
        Some((_, q)) if !q.is_empty() && q.len() <= 255 && !q.starts_with("amq.") => {
            Ok(q.to_owned())
        }
        Some(_) => Err("?queue= must name a queue (1-255 bytes, not amq.*)".to_owned()),
        None => Err("the URL names no queue (add ?queue=NAME)".to_owned()),
    }
}

/// `?prefetch=` of a work-queue URL: requests a worker takes at once (default 1).
pub(crate) fn prefetch_of(url: &str) -> Result<u16, String> {
    match params(url).find(|(k, _)| *k == "prefetch") {
        Some((_, n)) => n
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| "?prefetch= must be 1-65535".to_owned()),
        None => Ok(1),
    }
}

/// `url` without mitto's own query parameters, for the AMQP client.
pub(crate) fn amqp_url(url: &str) -> String {
    let Some((base, _)) = url.split_once('?') else {
        return url.to_owned();
    };
    let rest: Vec<String> = params(url)
        .filter(|(k, _)| !OWN_PARAMS.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn work_queue_urls() {
        let u = "amqp://guest:guest@127.0.0.1:5672/%2f?queue=svc.work&heartbeat=10&prefetch=4";
        assert_eq!(queue_of(u).unwrap(), "svc.work");
        assert_eq!(prefetch_of(u).unwrap(), 4);
        assert_eq!(
            amqp_url(u),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(amqp_url("amqp://h/%2f?queue=q"), "amqp://h/%2f");
        assert!(queue_of("amqp://h/%2f").is_err());
        assert!(queue_of("amqp://h/%2f?queue=").is_err());
        assert!(queue_of("amqp://h/%2f?queue=amq.x").is_err());
        assert_eq!(prefetch_of("amqp://h/%2f?queue=q").unwrap(), 1);
        assert!(prefetch_of("amqp://h/%2f?queue=q&prefetch=0").is_err());
    }
}
