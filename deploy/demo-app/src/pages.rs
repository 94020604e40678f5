//! HTML pages and the stylesheet. Pages are plain HTML without JavaScript, and every
//! value from a request is HTML-escaped.

pub const STYLE_CSS: &str = "\
body { font-family: sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; color: #222; }
nav a { margin-right: 1em; }
label { display: block; margin: 0.5em 0; }
input { display: block; margin-top: 0.2em; }
.error { color: #a00; }
.identity { color: #060; }
";

/// Login form as shown by `GET /login` and after failed credentials.
pub struct LoginForm<'a> {
    /// Form `action` URL, already percent-encoded.
    pub action: &'a str,
    pub csrf_token: &'a str,
    /// Username to fill in again after a failed attempt.
    pub username: &'a str,
    pub error: Option<&'a str>,
}

pub fn home() -> String {
    layout(
        "Home",
        "<h1>Demo App</h1>\n\
         <p>A small members area. <a href=\"/login\">Log in</a> to see your dashboard.</p>\n",
    )
}

pub fn about() -> String {
    layout(
        "About",
        "<h1>About</h1>\n\
         <p>This is a demo web application with a plain username and password login.\n\
         It has no two-factor authentication of its own.</p>\n",
    )
}

pub fn login(form: &LoginForm<'_>) -> String {
    let error = form.error.map_or_else(String::new, |message| {
        format!("<p class=\"error\">{}</p>\n", escape_html(message))
    });
    let main = format!(
        "<h1>Log in</h1>\n\
         {error}\
         <form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf_token}\">\n\
         <label>Username <input name=\"username\" value=\"{username}\" autocomplete=\"username\" required></label>\n\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\n\
         <button type=\"submit\">Log in</button>\n\
         </form>\n",
        action = escape_html(form.action),
        csrf_token = escape_html(form.csrf_token),
        username = escape_html(form.username),
    );
    layout("Log in", &main)
}

pub fn dashboard(user: &str, gateway_user: Option<&str>) -> String {
    let main = format!(
        "<h1>Welcome, {user}</h1>\n\
         {identity}\
         <p>You are logged in. See your <a href=\"/profile\">profile</a> or <a href=\"/logout\">log out</a>.</p>\n",
        user = escape_html(user),
        identity = gateway_identity(gateway_user),
    );
    layout("Dashboard", &main)
}

pub fn profile(user: &str, gateway_user: Option<&str>) -> String {
    let main = format!(
        "<h1>Profile</h1>\n\
         <p>Username: {user}</p>\n\
         {identity}\
         <p><a href=\"/dashboard\">Back to the dashboard</a></p>\n",
        user = escape_html(user),
        identity = gateway_identity(gateway_user),
    );
    layout("Profile", &main)
}

/// Page for a `POST /login` that fails the CSRF check. `reason` names the missing or
/// mismatched value.
pub fn csrf_failure(reason: &str) -> String {
    let main = format!(
        "<h1>Forbidden</h1>\n\
         <p>CSRF verification failed: {}. <a href=\"/login\">Reload the login form</a> and try again.</p>\n",
        escape_html(reason)
    );
    layout("Forbidden", &main)
}

pub fn not_found() -> String {
    layout(
        "Not found",
        "<h1>Not found</h1>\n<p>No page exists at this address. Go to the <a href=\"/\">home page</a>.</p>\n",
    )
}

fn gateway_identity(gateway_user: Option<&str>) -> String {
    gateway_user.map_or_else(String::new, |value| {
        format!(
            "<p class=\"identity\">Gateway identity: {}</p>\n",
            escape_html(value)
        )
    })
}

/// Wraps `main` (trusted HTML) in the common page layout. `title` must not contain
/// markup because it is inserted as is.
fn layout(title: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <title>{title} - Demo App</title>\n\
         <link rel=\"stylesheet\" href=\"/static/style.css\">\n\
         </head>\n\
         <body>\n\
         <nav><a href=\"/\">Home</a> <a href=\"/about\">About</a> <a href=\"/dashboard\">Dashboard</a> \
         <a href=\"/profile\">Profile</a> <a href=\"/login\">Log in</a> <a href=\"/logout\">Log out</a></nav>\n\
         <main>\n\
         {main}\
         </main>\n\
         </body>\n\
         </html>\n"
    )
}

/// Escapes the five characters that are special in HTML text and quoted attributes.
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_html_special_characters() {
        assert_eq!(
            escape_html("<a href=\"x\">Tom & 'Jerry'</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn dashboard_escapes_gateway_identity() {
        let page = dashboard("alice", Some("<b>alice</b>"));
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("Welcome, alice"));
        assert!(page.contains("Gateway identity: &lt;b&gt;alice&lt;/b&gt;"));
    }

    #[test]
    fn dashboard_without_gateway_header() {
        assert!(!dashboard("alice", None).contains("Gateway identity"));
    }

    #[test]
    fn login_form_fields() {
        let page = login(&LoginForm {
            action: "/login?next=%2Fprofile",
            csrf_token: "tok",
            username: "bob",
            error: Some("Invalid username or password."),
        });
        assert!(page.contains("action=\"/login?next=%2Fprofile\""));
        assert!(page.contains("name=\"csrf_token\" value=\"tok\""));
        assert!(page.contains("name=\"username\" value=\"bob\""));
        assert!(page.contains("Invalid username or password."));
        assert!(!page.contains("<script"));
    }
}
