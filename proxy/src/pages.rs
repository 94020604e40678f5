//! The gateway's HTML pages, rendered with minijinja (HTML auto-escaping on).

use minijinja::{context, Environment};

/// Message shown when a code is rejected.
pub const CODE_REJECTED: &str = "That code was not accepted. Check that your phone sets the date and time automatically; codes change every 30 seconds.";

/// Message shown when a backup code is rejected.
pub const BACKUP_REJECTED: &str = "That backup code was not accepted. Each code works once; check it against your saved list.";

/// The compiled templates.
pub struct Pages {
    env: Environment<'static>,
    product: String,
    prefix: String,
}

impl Pages {
    /// Loads the built-in templates.
    pub fn new(product: &str, prefix: &str) -> Pages {
        let mut env = Environment::new();
        env.add_template("layout.html", include_str!("../templates/layout.html")).expect("layout template parses");
        env.add_template("challenge.html", include_str!("../templates/challenge.html")).expect("challenge template parses");
        env.add_template("message.html", include_str!("../templates/message.html")).expect("message template parses");
        env.add_template("settings.html", include_str!("../templates/settings.html")).expect("settings template parses");
        env.add_template("enroll.html", include_str!("../templates/enroll.html")).expect("enroll template parses");
        env.add_template("backup_codes.html", include_str!("../templates/backup_codes.html")).expect("backup codes template parses");
        env.add_template("backup_challenge.html", include_str!("../templates/backup_challenge.html")).expect("backup challenge template parses");
        Pages { env, product: product.to_string(), prefix: prefix.to_string() }
    }

    /// Renders the code challenge, with an optional error.
    pub fn challenge(&self, csrf: &str, error: Option<&str>) -> String {
        self.env
            .get_template("challenge.html")
            .and_then(|t| {
                t.render(context! {
                    title => "Two-Factor Authentication",
                    product => &self.product,
                    prefix => &self.prefix,
                    csrf => csrf,
                    error => error,
                })
            })
            .expect("challenge template renders")
    }

    /// Renders `template` with the common values (title, product, prefix) added.
    pub fn render(&self, template: &str, title: &str, values: minijinja::Value) -> String {
        let common = context! { title => title, product => &self.product, prefix => &self.prefix };
        self.env
            .get_template(template)
            .and_then(|t| t.render(context! { ..common, ..values }))
            .unwrap_or_else(|e| panic!("template {template} renders: {e}"))
    }

    /// Renders a one-paragraph page with an optional link.
    pub fn message(&self, title: &str, message: &str, error: bool, link: Option<(&str, &str)>) -> String {
        self.env
            .get_template("message.html")
            .and_then(|t| {
                t.render(context! {
                    title => title,
                    product => &self.product,
                    message => message,
                    error => error,
                    link => link.map(|l| l.0),
                    link_label => link.map(|l| l.1),
                })
            })
            .expect("message template renders")
    }
}
