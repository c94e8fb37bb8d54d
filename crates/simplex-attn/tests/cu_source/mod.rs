//! Reading the CUDA sources as text, for `tests/kernel_sources.rs`: the `extern "C"` entry
//! points each `.cu` file compiles (macro instantiations expanded) with their
//! `__launch_bounds__`, and the integer value of a constant expression in a file's scope
//! (file-level `constexpr int`s of the file and the headers it includes, `constexpr` functions
//! of one `return`, and the `static constexpr` members of `template <int ...> struct`s, whose
//! parameters may also be `bool`s: `Smem<128, 2>::BYTES`, `Smem<128, 64, true>::BYTES`). Enough C++ for the layouts of these kernels, nothing more: what it
//! cannot read is an error naming it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One `.cu` or `.cuh` file: comments removed, line continuations joined, and its includes.
pub struct Source {
    pub name: String,
    pub text: String,
    includes: Vec<Source>,
    consts: HashMap<String, String>,
    funcs: HashMap<String, (String, String)>,
    structs: HashMap<String, Struct>,
}

struct Struct {
    params: Vec<String>,
    members: HashMap<String, String>,
}

/// An entry point: its symbol and the first argument of its `__launch_bounds__` (threads), if
/// any, with the macro's arguments substituted.
#[derive(Debug, Clone)]
pub struct EntryPoint {
    pub symbol: String,
    pub threads: Option<String>,
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out.replace("\\\n", " ")
}

impl Source {
    /// Reads `kernels/NAME` and the headers it includes.
    pub fn load(dir: &Path, name: &str) -> Source {
        let path: PathBuf = dir.join(name);
        let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = strip_comments(&raw);
        let includes = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("#include \""))
            .map(|l| Source::load(dir, l.trim_end_matches('"')))
            .collect();
        let mut s = Source {
            name: name.into(),
            text,
            includes,
            consts: HashMap::new(),
            funcs: HashMap::new(),
            structs: HashMap::new(),
        };
        s.scan();
        s
    }

    fn scan(&mut self) {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let t = line.trim();
            if let Some(decl) = line.strip_prefix("constexpr int ") {
                // `constexpr int A = x, B = y;` at file (namespace) level
                for part in split_top(decl.trim().trim_end_matches(';'), ',') {
                    if let Some((name, expr)) = part.split_once('=') {
                        self.consts.insert(name.trim().into(), expr.trim().into());
                    }
                }
            } else if let Some(pos) = line.find("constexpr int ") {
                // `__host__ __device__ constexpr int f(int d) { return EXPR; }`
                let rest = &line[pos + "constexpr int ".len()..];
                if let (Some(open), Some(ret)) = (rest.find('('), rest.find("return ")) {
                    if !line.starts_with(' ') {
                        let name = rest[..open].trim().to_string();
                        let param = rest[open + 1..rest.find(')').expect("(")]
                            .trim()
                            .trim_start_matches("int ")
                            .to_string();
                        let body = rest[ret + 7..]
                            .split(';')
                            .next()
                            .expect("return")
                            .to_string();
                        self.funcs.insert(name, (param, body));
                    }
                }
            } else if t.starts_with("template <int") && i + 1 < lines.len() {
                if let Some(name) = lines[i + 1].strip_prefix("struct ") {
                    let name = name.trim_end_matches(" {").trim().to_string();
                    let params = t["template <".len()..t.len() - 1]
                        .split(',')
                        .map(|p| {
                            let p = p.trim();
                            p.strip_prefix("int ")
                                .or_else(|| p.strip_prefix("bool "))
                                .unwrap_or(p)
                                .to_string()
                        })
                        .collect();
                    let mut members = HashMap::new();
                    let mut j = i + 2;
                    while j < lines.len() && !lines[j].starts_with("};") {
                        let m = lines[j].trim();
                        for kind in ["static constexpr int ", "static constexpr bool "] {
                            if let Some(decl) = m.strip_prefix(kind) {
                                let (n, e) = decl.trim_end_matches(';').split_once('=').expect("=");
                                members.insert(n.trim().into(), e.trim().into());
                            }
                        }
                        j += 1;
                    }
                    self.structs.insert(name, Struct { params, members });
                    i = j;
                }
            }
            i += 1;
        }
    }

    fn constant(&self, name: &str) -> Option<&String> {
        self.consts
            .get(name)
            .or_else(|| self.includes.iter().find_map(|s| s.constant(name)))
    }

    fn func(&self, name: &str) -> Option<&(String, String)> {
        self.funcs
            .get(name)
            .or_else(|| self.includes.iter().find_map(|s| s.func(name)))
    }

    fn find_struct(&self, name: &str) -> Option<&Struct> {
        self.structs
            .get(name)
            .or_else(|| self.includes.iter().find_map(|s| s.find_struct(name)))
    }

    /// The value of `expr` in this file's scope.
    pub fn eval(&self, expr: &str) -> i64 {
        let toks = tokens(expr);
        let mut p = Parser {
            src: self,
            toks: &toks,
            at: 0,
            scope: HashMap::new(),
            within: None,
        };
        let v = p.ternary();
        assert!(p.at == toks.len(), "{}: cannot read {expr:?}", self.name);
        v
    }

    /// The entry points this file compiles: `extern "C" __global__` functions, those written
    /// out and those of macro instantiations.
    pub fn entry_points(&self) -> Vec<EntryPoint> {
        let mut macros: Vec<(String, Vec<String>, String)> = vec![];
        let mut plain = String::new();
        for line in self.text.lines() {
            if let Some(def) = line.strip_prefix("#define ") {
                let (head, body) = def.split_at(def.find(')').map_or(0, |i| i + 1));
                if let Some(open) = head.find('(') {
                    let params = head[open + 1..head.len() - 1]
                        .split(',')
                        .map(|p| p.trim().to_string())
                        .collect();
                    macros.push((head[..open].to_string(), params, body.to_string()));
                }
            } else {
                plain.push_str(line);
                plain.push('\n');
            }
        }
        let mut out = entry_points_in(&plain, &HashMap::new());
        for line in plain.lines() {
            for (name, params, body) in &macros {
                if let Some(args) = line.trim().strip_prefix(&format!("{name}(")) {
                    let args = split_top(args.trim_end_matches(';').trim_end_matches(')'), ',');
                    let bind: HashMap<String, String> = params.iter().cloned().zip(args).collect();
                    out.extend(entry_points_in(body, &bind));
                }
            }
        }
        out
    }
}

/// The `extern "C" __global__` functions of `text`, macro parameters `bind` substituted.
fn entry_points_in(text: &str, bind: &HashMap<String, String>) -> Vec<EntryPoint> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(i) = rest.find("extern \"C\" __global__ void") {
        rest = rest[i + "extern \"C\" __global__ void".len()..].trim_start();
        let mut threads = None;
        if let Some(r) = rest.strip_prefix("__launch_bounds__(") {
            let close = r.find(')').expect("launch bounds");
            let first = split_top(&r[..close], ',').remove(0);
            threads = Some(substitute(&first, bind));
            rest = r[close + 1..].trim_start();
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '#'))
            .expect("a name");
        let symbol = rest[..end]
            .split("##")
            .map(|piece| bind.get(piece.trim()).cloned().unwrap_or(piece.into()))
            .collect::<String>();
        let symbol = bind.get(&symbol).cloned().unwrap_or(symbol);
        out.push(EntryPoint { symbol, threads });
        rest = &rest[end..];
    }
    out
}

/// `expr` with every identifier that is a macro parameter replaced by its argument.
fn substitute(expr: &str, bind: &HashMap<String, String>) -> String {
    tokens(expr)
        .into_iter()
        .map(|t| bind.get(&t).cloned().unwrap_or(t))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits at `sep` outside parentheses and angle brackets.
fn split_top(s: &str, sep: char) -> Vec<String> {
    let (mut depth, mut start, mut out) = (0i32, 0, vec![]);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(s[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim().to_string());
    out
}

fn tokens(s: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let (mut out, mut rest) = (vec![], s);
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[1..];
        } else if ident(c) {
            // NAME, or ns::NAME
            let mut end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
            while rest[end..].starts_with("::") && rest[end + 2..].starts_with(ident) {
                end += 2 + rest[end + 2..]
                    .find(|c: char| !ident(c))
                    .unwrap_or(rest.len() - end - 2);
            }
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        } else {
            let two = rest.get(..2).unwrap_or("");
            let n = if ["<=", ">=", "==", "!=", "&&", "||", "::"].contains(&two) {
                2
            } else {
                c.len_utf8()
            };
            out.push(rest[..n].to_string());
            rest = &rest[n..];
        }
    }
    out
}

struct Parser<'a> {
    src: &'a Source,
    toks: &'a [String],
    at: usize,
    /// template or function parameters
    scope: HashMap<String, i64>,
    /// the struct whose member is being evaluated, with its template arguments
    within: Option<(&'a Struct, Vec<i64>)>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &str {
        self.toks.get(self.at).map_or("", |s| s.as_str())
    }

    fn next(&mut self) -> String {
        let t = self.peek().to_string();
        self.at += 1;
        t
    }

    fn expect(&mut self, t: &str) {
        let got = self.next();
        assert_eq!(got, t, "{}: expected {t} in {:?}", self.src.name, self.toks);
    }

    fn ternary(&mut self) -> i64 {
        let c = self.binary(0);
        if self.peek() == "?" {
            self.next();
            let a = self.ternary();
            self.expect(":");
            let b = self.ternary();
            if c != 0 {
                a
            } else {
                b
            }
        } else {
            c
        }
    }

    fn binary(&mut self, min: u8) -> i64 {
        let prec = |op: &str| match op {
            "||" => Some(1),
            "&&" => Some(2),
            "==" | "!=" => Some(3),
            "<" | ">" | "<=" | ">=" => Some(4),
            "+" | "-" => Some(5),
            "*" | "/" | "%" => Some(6),
            _ => None,
        };
        let mut lhs = self.unary();
        while let Some(p) = prec(self.peek()).filter(|&p| p > min) {
            let op = self.next();
            let rhs = self.binary(p);
            lhs = match op.as_str() {
                "||" => i64::from(lhs != 0 || rhs != 0),
                "&&" => i64::from(lhs != 0 && rhs != 0),
                "==" => i64::from(lhs == rhs),
                "!=" => i64::from(lhs != rhs),
                "<" => i64::from(lhs < rhs),
                ">" => i64::from(lhs > rhs),
                "<=" => i64::from(lhs <= rhs),
                ">=" => i64::from(lhs >= rhs),
                "+" => lhs + rhs,
                "-" => lhs - rhs,
                "*" => lhs * rhs,
                "/" => lhs / rhs,
                _ => lhs % rhs,
            };
        }
        lhs
    }

    fn unary(&mut self) -> i64 {
        match self.peek() {
            "-" => {
                self.next();
                -self.unary()
            }
            "!" => {
                self.next();
                i64::from(self.unary() == 0)
            }
            "(" => {
                self.next();
                let v = self.ternary();
                self.expect(")");
                v
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> i64 {
        let t = self.next();
        if let Ok(v) = t.parse::<i64>() {
            return v;
        }
        match t.as_str() {
            "true" => return 1,
            "false" => return 0,
            _ => {}
        }
        // a struct member: Name<args>::MEMBER
        if let Some(s) = self.src.find_struct(&t).filter(|_| self.peek() == "<") {
            self.next();
            let mut args = vec![];
            loop {
                args.push(self.binary(4)); // above comparisons: `>` closes the list
                match self.next().as_str() {
                    "," => continue,
                    ">" => break,
                    other => panic!("{}: template arguments of {t}: {other:?}", self.src.name),
                }
            }
            self.expect("::");
            let member = self.next();
            return self.member(s, args, &member);
        }
        // a constexpr function of one argument
        if self.peek() == "(" {
            let (param, body) = self
                .src
                .func(&t)
                .unwrap_or_else(|| panic!("{}: unknown function {t}", self.src.name));
            self.next();
            let arg = self.ternary();
            self.expect(")");
            return self.sub([(param.clone(), arg)].into(), None, body);
        }
        let name = t.rsplit("::").next().expect("a name");
        if let Some(&v) = self.scope.get(name) {
            return v;
        }
        if let Some((s, args)) = self.within.clone() {
            if s.members.contains_key(name) {
                return self.member(s, args, name);
            }
        }
        let expr = self
            .src
            .constant(name)
            .unwrap_or_else(|| panic!("{}: unknown constant {t}", self.src.name));
        // a file-level constant sees only file-level names
        self.src.eval(expr)
    }

    fn member(&self, s: &'a Struct, args: Vec<i64>, member: &str) -> i64 {
        let scope = s.params.iter().cloned().zip(args.iter().copied()).collect();
        let expr = s
            .members
            .get(member)
            .unwrap_or_else(|| panic!("{}: no member {member}", self.src.name));
        self.sub(scope, Some((s, args)), expr)
    }

    /// `expr` evaluated with `scope` (falling back to this parser's) inside `within`.
    fn sub(
        &self,
        mut scope: HashMap<String, i64>,
        within: Option<(&'a Struct, Vec<i64>)>,
        expr: &str,
    ) -> i64 {
        if within.is_none() {
            for (k, v) in &self.scope {
                scope.entry(k.clone()).or_insert(*v);
            }
        }
        let toks = tokens(expr);
        let mut p = Parser {
            src: self.src,
            toks: &toks,
            at: 0,
            scope,
            within: within.or_else(|| self.within.clone()),
        };
        let v = p.ternary();
        assert!(
            p.at == toks.len(),
            "{}: cannot read {expr:?}",
            self.src.name
        );
        v
    }
}
