//! A lexer, block checker and small evaluator for the subset of Go
//! templates the Helm chart uses (no helm binary needed).

use serde_json::json;

use super::*;

#[derive(Debug, Clone)]
pub(crate) enum Tok {
    Text(String),
    Action { body: String, line: usize },
}

/// Splits a Go template into text and actions, applying `{{-`/`-}}` trimming
/// and dropping comments. Errors on an unterminated action.
pub(crate) fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    let line_of = |r: &str| src[..src.len() - r.len()].matches('\n').count() + 1;
    loop {
        let Some(open) = rest.find("{{") else {
            let mut t = rest.to_owned();
            if trim_next {
                t = t.trim_start().to_owned();
            }
            if rest.contains("}}") {
                return Err(format!(
                    "line {}: \"}}}}\" without \"{{{{\"",
                    line_of(&rest[rest.find("}}").unwrap_or(0)..])
                ));
            }
            out.push(Tok::Text(t));
            return Ok(out);
        };
        let mut t = rest[..open].to_owned();
        if let Some(close) = t.find("}}") {
            return Err(format!(
                "line {}: \"}}}}\" without \"{{{{\"",
                line_of(&rest[close..])
            ));
        }
        if trim_next {
            t = t.trim_start().to_owned();
        }
        let line = line_of(&rest[open..]);
        let mut inner = &rest[open + 2..];
        let trim_left = inner.starts_with("- ") || inner.starts_with("-\n");
        if trim_left {
            inner = &inner[1..];
            t = t.trim_end().to_owned();
        }
        out.push(Tok::Text(t));
        // Find the closing delimiter outside string literals and comments.
        let b = inner.as_bytes();
        let mut i = 0;
        let mut end = None;
        let comment = inner.trim_start().starts_with("/*");
        while i < b.len() {
            if comment {
                if inner[i..].starts_with("*/") {
                    let after = inner[i + 2..].trim_start_matches([' ', '-']);
                    if after.starts_with("}}") {
                        end = Some((i + 2, inner.len() - after.len()));
                        break;
                    }
                }
                i += 1;
                continue;
            }
            match b[i] {
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        if b[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                b'`' => {
                    i += 1;
                    while i < b.len() && b[i] != b'`' {
                        i += 1;
                    }
                }
                b'\n' => return Err(format!("line {line}: newline inside an action")),
                b'}' if inner[i..].starts_with("}}") => {
                    end = Some((i, i));
                    break;
                }
                b'{' if inner[i..].starts_with("{{") => {
                    return Err(format!("line {line}: \"{{{{\" inside an action"));
                }
                _ => {}
            }
            i += 1;
        }
        let Some((body_end, close)) = end else {
            return Err(format!("line {line}: unterminated action"));
        };
        let mut body = inner[..body_end].to_string();
        let trim_right = body.ends_with(" -") || inner[body_end..close].contains('-');
        if body.ends_with(" -") {
            body.truncate(body.len() - 2);
        }
        if !comment {
            out.push(Tok::Action {
                body: body.trim().to_owned(),
                line,
            });
        }
        trim_next = trim_right;
        rest = &inner[close + 2..];
    }
}

pub(crate) fn keyword(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or("")
}

/// Blocks balance: if/range/with/define/block … end; else only inside.
pub(crate) fn check_blocks(toks: &[Tok]) -> Result<(), String> {
    let mut stack: Vec<(String, usize)> = Vec::new();
    for t in toks {
        let Tok::Action { body, line } = t else {
            continue;
        };
        match keyword(body) {
            k @ ("if" | "range" | "with" | "define" | "block") => stack.push((k.to_owned(), *line)),
            "else" => match stack.last() {
                Some((k, _)) if k == "if" || k == "with" || k == "range" => {}
                _ => return Err(format!("line {line}: else outside if/with/range")),
            },
            "end" => {
                stack
                    .pop()
                    .ok_or_else(|| format!("line {line}: end without a block"))?;
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some((k, line)) => Err(format!("line {line}: {k} without end")),
        None => Ok(()),
    }
}

/// `.Values.a.b` paths in an action body (outside string literals).
pub(crate) fn values_paths(body: &str) -> Vec<Vec<String>> {
    let mut code = String::new();
    let mut in_str = false;
    let mut prev = ' ';
    for c in body.chars() {
        if c == '"' && prev != '\\' {
            in_str = !in_str;
            code.push(' ');
        } else if !in_str {
            code.push(c);
        }
        prev = c;
    }
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find(".Values.") {
        let tail = &rest[i + ".Values.".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches('.');
        out.push(path.split('.').map(str::to_owned).collect());
        rest = &tail[end..];
    }
    out
}

/// The quoted names after `kw "` in an action body.
pub(crate) fn quoted_after(body: &str, kw: &str) -> Vec<String> {
    let pat = format!("{kw} \"");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&pat) {
        let tail = &rest[i + pat.len()..];
        out.push(tail.split('"').next().unwrap_or_default().to_owned());
        rest = tail;
    }
    out
}

pub(crate) fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}
// A small evaluator for the subset of Go templates the chart's TOML blocks
// use: text, if/else/end, pipelines of .Values fields, literals, parentheses
// and the functions printf, int, toJson, quote, eq, not, default. Anything
// else is an error (extend it rather than weaken the check).

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Field(Vec<String>),
    Str(String),
    Num(i64),
    Ident(String),
    Sub(Vec<Vec<Operand>>),
}

pub(crate) fn parse_pipeline(src: &str) -> Result<Vec<Vec<Operand>>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut pos = 0;
    let p = pipeline(&chars, &mut pos)?;
    if pos < chars.len() {
        return Err(format!(
            "unexpected {:?} in {src:?}",
            chars[pos..].iter().collect::<String>()
        ));
    }
    Ok(p)
}

pub(crate) fn pipeline(c: &[char], pos: &mut usize) -> Result<Vec<Vec<Operand>>, String> {
    let mut cmds = vec![Vec::new()];
    while *pos < c.len() {
        let ch = c[*pos];
        match ch {
            ' ' | '\t' => *pos += 1,
            '|' => {
                *pos += 1;
                cmds.push(Vec::new());
            }
            ')' => break,
            '(' => {
                *pos += 1;
                let sub = pipeline(c, pos)?;
                if c.get(*pos) != Some(&')') {
                    return Err("missing )".into());
                }
                *pos += 1;
                cmds.last_mut().expect("cmd").push(Operand::Sub(sub));
            }
            '"' => {
                let mut s = String::new();
                *pos += 1;
                while *pos < c.len() && c[*pos] != '"' {
                    if c[*pos] == '\\' {
                        *pos += 1;
                        s.push(match c.get(*pos) {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(&o) => o,
                            None => return Err("bad escape".into()),
                        });
                    } else {
                        s.push(c[*pos]);
                    }
                    *pos += 1;
                }
                *pos += 1;
                cmds.last_mut().expect("cmd").push(Operand::Str(s));
            }
            _ => {
                let start = *pos;
                while *pos < c.len() && !matches!(c[*pos], ' ' | '\t' | '|' | '(' | ')') {
                    *pos += 1;
                }
                let w: String = c[start..*pos].iter().collect();
                let op = if let Some(f) = w.strip_prefix('.') {
                    Operand::Field(
                        f.split('.')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                } else if let Ok(n) = w.parse::<i64>() {
                    Operand::Num(n)
                } else if w.chars().all(|x| x.is_ascii_alphanumeric() || x == '_') {
                    Operand::Ident(w)
                } else {
                    return Err(format!("unsupported operand {w:?}"));
                };
                cmds.last_mut().expect("cmd").push(op);
            }
        }
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".into());
    }
    Ok(cmds)
}

pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub(crate) fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        o => o.to_string(),
    }
}

pub(crate) fn eval_pipeline(p: &[Vec<Operand>], ctx: &Value) -> Result<Value, String> {
    let mut piped: Option<Value> = None;
    for cmd in p {
        piped = Some(eval_command(cmd, piped, ctx)?);
    }
    Ok(piped.unwrap_or(Value::Null))
}

pub(crate) fn eval_operand(o: &Operand, ctx: &Value) -> Result<Value, String> {
    Ok(match o {
        Operand::Field(path) => lookup(ctx, path)
            .cloned()
            .ok_or_else(|| format!("no value at .{}", path.join(".")))?,
        Operand::Str(s) => Value::String(s.clone()),
        Operand::Num(n) => json!(n),
        Operand::Sub(p) => eval_pipeline(p, ctx)?,
        Operand::Ident(i) => match i.as_str() {
            "true" => json!(true),
            "false" => json!(false),
            f => return Err(format!("function {f} needs to be first in a command")),
        },
    })
}

pub(crate) fn eval_command(
    cmd: &[Operand],
    piped: Option<Value>,
    ctx: &Value,
) -> Result<Value, String> {
    let Operand::Ident(f) = &cmd[0] else {
        if cmd.len() > 1 || piped.is_some() {
            return Err("a value cannot take arguments".into());
        }
        return eval_operand(&cmd[0], ctx);
    };
    if f == "true" || f == "false" {
        return eval_operand(&cmd[0], ctx);
    }
    let mut args = cmd[1..]
        .iter()
        .map(|o| eval_operand(o, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    let one = |args: &[Value]| -> Result<Value, String> {
        match args {
            [a] => Ok(a.clone()),
            _ => Err(format!("{f} takes one argument, got {}", args.len())),
        }
    };
    Ok(match f.as_str() {
        "toJson" => Value::String(serde_json::to_string(&one(&args)?).expect("json")),
        "quote" => Value::String(format!("{:?}", as_text(&one(&args)?))),
        "int" => match one(&args)? {
            Value::Number(n) => json!(n.as_f64().map(|x| x as i64).unwrap_or_default()),
            Value::String(s) => json!(s.parse::<i64>().map_err(|e| e.to_string())?),
            o => return Err(format!("int of {o}")),
        },
        "not" => json!(!truthy(&one(&args)?)),
        "eq" => match args.as_slice() {
            [a, rest @ ..] if !rest.is_empty() => json!(rest.iter().any(|b| b == a)),
            _ => return Err("eq takes at least two arguments".into()),
        },
        "default" => match args.as_slice() {
            [d, v] => {
                if truthy(v) {
                    v.clone()
                } else {
                    d.clone()
                }
            }
            _ => return Err("default takes two arguments".into()),
        },
        "printf" => {
            let (fmt, rest) = args.split_first().ok_or("printf needs a format")?;
            let fmt = fmt.as_str().ok_or("printf format must be a string")?;
            let mut out = String::new();
            let mut it = rest.iter();
            let mut chars = fmt.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('%') => out.push('%'),
                    Some('s' | 'd' | 'v') => {
                        out.push_str(&as_text(it.next().ok_or("printf: too few arguments")?))
                    }
                    o => return Err(format!("printf verb %{o:?} not supported")),
                }
            }
            Value::String(out)
        }
        other => {
            return Err(format!(
                "function {other} is not supported by the test renderer"
            ));
        }
    })
}

/// Renders text/if/else/end and pipelines.
pub(crate) fn render(toks: &[Tok], ctx: &Value) -> Result<String, String> {
    fn block(
        toks: &[Tok],
        i: &mut usize,
        ctx: &Value,
        out: &mut String,
        emit: bool,
    ) -> Result<Option<String>, String> {
        while *i < toks.len() {
            let t = &toks[*i];
            *i += 1;
            match t {
                Tok::Text(s) => {
                    if emit {
                        out.push_str(s);
                    }
                }
                Tok::Action { body, line } => {
                    let err = |e: String| format!("line {line}: {{{{ {body} }}}}: {e}");
                    match keyword(body) {
                        "end" => return Ok(Some("end".into())),
                        "else" => {
                            if body != "else" {
                                return Err(err("only a bare else is supported".into()));
                            }
                            return Ok(Some("else".into()));
                        }
                        "if" => {
                            let cond = if emit {
                                truthy(
                                    &eval_pipeline(&parse_pipeline(&body[2..]).map_err(err)?, ctx)
                                        .map_err(err)?,
                                )
                            } else {
                                false
                            };
                            let stop = block(toks, i, ctx, out, emit && cond)?;
                            if stop.as_deref() == Some("else") {
                                let stop = block(toks, i, ctx, out, emit && !cond)?;
                                if stop.as_deref() != Some("end") {
                                    return Err(err("if without end".into()));
                                }
                            } else if stop.as_deref() != Some("end") {
                                return Err(err("if without end".into()));
                            }
                        }
                        k @ ("range" | "with" | "define" | "block" | "template" | "include") => {
                            return Err(err(format!("{k} is not supported by the test renderer")));
                        }
                        _ => {
                            if emit {
                                let v = eval_pipeline(&parse_pipeline(body).map_err(err)?, ctx)
                                    .map_err(err)?;
                                out.push_str(&as_text(&v));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }
    let mut out = String::new();
    let mut i = 0;
    match block(toks, &mut i, ctx, &mut out, true)? {
        None => Ok(out),
        Some(k) => Err(format!("unexpected {k}")),
    }
}
