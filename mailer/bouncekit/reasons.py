"""The bounce reason taxonomy, as data: each reason, its action and what it means, plus the
pattern tables that map an enhanced status code (RFC 3463) or an MTA's diagnostic wording
to a reason.

The vocabulary is the one sisimai uses, so that figures compare with that reference.  This
module holds tables only; :mod:`mailer.bouncekit.classify` decides which evidence wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPRESS = "suppress"   # the address is bad: stop mailing it now
SOFT = "soft"           # the mailbox has a problem that may pass: counts toward the soft bounce limit
SENDER = "sender"       # the problem is ours (reputation, authentication, content, policy, rate)
IGNORE = "ignore"       # nothing to do against the recipient (delays, auto-replies, delivered)
COMPLAINT = "complaint"  # a feedback report: suppress and withdraw marketing consent

ACTIONS = (SUPPRESS, SOFT, SENDER, IGNORE, COMPLAINT)


@dataclass(frozen=True)
class Reason:
    name: str
    action: str
    #: Action when the reply was temporary (4xx / 4.x.x); None means "same as ``action``".
    temporary_action: str | None
    description: str


def _r(name: str, action: str, description: str, temporary: str | None = None) -> Reason:
    return Reason(name, action, temporary, description)


#: reason -> Reason.  Sender-side reasons never count against the customer.
REASONS: dict[str, Reason] = {r.name: r for r in (
    _r("userunknown", SUPPRESS, "The mailbox does not exist.", SOFT),
    _r("hostunknown", SUPPRESS, "The recipient's domain does not exist or has no mail host.", SOFT),
    _r("hasmoved", SUPPRESS, "The recipient has moved and left no forwarding."),
    _r("notaccept", SUPPRESS, "The recipient's host accepts no mail (null MX, 'does not accept mail').", SOFT),
    _r("mailboxfull", SOFT, "The mailbox is full or over quota."),
    _r("exceedlimit", SOFT, "The message exceeds the recipient's own size limit."),
    _r("suspend", SOFT, "The mailbox is disabled, suspended or inactive for now."),
    _r("filtered", SOFT, "A recipient-side filter refused the message (the recipient's own rules)."),
    _r("rejected", SENDER, "Our envelope sender was refused (sender address rejected, bad MAIL FROM)."),
    _r("blocked", SENDER, "Our sending IP or host is blocked or listed (DNSBL, blacklist, connection refused)."),
    _r("spamdetected", SENDER, "The message was judged to be spam."),
    _r("policyviolation", SENDER, "The message violates the receiving site's policy (DMARC, content policy)."),
    _r("securityerror", SENDER, "A security check of ours failed (authentication required, bad credentials)."),
    _r("badreputation", SENDER, "Our sending IP or domain has a poor reputation."),
    _r("requireptr", SENDER, "Our sending IP has no or a mismatching reverse DNS (PTR)."),
    _r("authfailure", SENDER, "SPF, DKIM or DMARC failed for our mail."),
    _r("norelaying", SENDER, "The host refused to relay for us (relaying denied)."),
    _r("toomanyconn", SENDER, "We opened too many connections."),
    _r("speeding", SENDER, "We sent too fast; the host asks us to slow down."),
    _r("ratelimited", SENDER, "We exceeded the host's rate limit."),
    _r("failedstarttls", SENDER, "STARTTLS failed or TLS is required and we did not use it."),
    _r("contenterror", SENDER, "The message content was refused (malformed headers, bad encoding)."),
    _r("virusdetected", SENDER, "The message was judged to carry a virus."),
    _r("mesgtoobig", SENDER, "The message is larger than the host accepts."),
    _r("notcompliantrfc", SENDER, "The message does not comply with the RFCs (duplicate headers, bare LF)."),
    _r("syntaxerror", SENDER, "Our SMTP client sent a command the host could not parse."),
    _r("systemerror", SOFT, "The receiving system had an error (loop, configuration, internal error)."),
    _r("systemfull", SOFT, "The receiving system is out of disk or resources."),
    _r("networkerror", SOFT, "A network or DNS problem on the way (lookup failure, routing loop)."),
    _r("mailererror", SOFT, "The recipient's delivery program failed (procmail, pipe exit code)."),
    _r("expired", SOFT, "The message was given up after retrying for the queue lifetime."),
    _r("onhold", IGNORE, "A failure whose cause could not be decided; recorded, nobody is penalised."),
    _r("delivered", IGNORE, "The report says the message was delivered."),
    _r("vacation", IGNORE, "An auto-reply (vacation, out of office)."),
    _r("feedback", COMPLAINT, "A complaint (ARF feedback report)."),
    _r("undefined", IGNORE, "Nothing readable says why; recorded, nobody is penalised."),
)}

SENDER_SIDE = frozenset(n for n, r in REASONS.items() if r.action == SENDER)


def action_for(reason: str, *, temporary: bool = False) -> str:
    """The action for ``reason``; a temporary reply may soften a suppressing reason."""
    r = REASONS.get(reason, REASONS["undefined"])
    if temporary and r.temporary_action is not None:
        return r.temporary_action
    return r.action


#: Enhanced status code (class.subject.detail, class ignored: matched as "x.S.D") -> reason.
#: Codes too vague to decide on (x.0.0, x.5.0, ...) are absent on purpose.
STATUS_REASONS: dict[str, str] = {
    "1.0": "undefined", "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown",
    "1.4": "userunknown", "1.5": "delivered", "1.6": "hasmoved", "1.7": "rejected",
    "1.8": "rejected", "1.9": "systemerror", "1.10": "notaccept",
    "2.1": "suspend", "2.2": "mailboxfull", "2.3": "exceedlimit", "2.4": "systemerror",
    "3.1": "systemfull", "3.2": "notaccept", "3.3": "systemerror", "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.1": "networkerror", "4.2": "networkerror", "4.3": "systemerror", "4.4": "hostunknown",
    "4.5": "systemfull", "4.6": "networkerror", "4.7": "expired",
    "5.1": "syntaxerror", "5.2": "syntaxerror", "5.3": "toomanyconn", "5.4": "syntaxerror",
    "5.5": "syntaxerror", "5.6": "contenterror",
    "6.0": "contenterror", "6.1": "contenterror", "6.2": "contenterror", "6.3": "contenterror",
    "6.4": "contenterror", "6.5": "contenterror", "6.6": "contenterror",
    "7.1": "blocked", "7.2": "systemerror", "7.3": "securityerror", "7.4": "securityerror",
    "7.5": "securityerror", "7.6": "securityerror", "7.7": "securityerror",
    "7.8": "securityerror", "7.9": "securityerror", "7.10": "securityerror",
    "7.11": "failedstarttls", "7.13": "suspend", "7.14": "securityerror",
    "7.15": "securityerror", "7.16": "securityerror", "7.17": "securityerror",
    "7.20": "authfailure", "7.21": "authfailure", "7.22": "authfailure", "7.23": "authfailure",
    "7.24": "authfailure", "7.25": "requireptr", "7.26": "authfailure", "7.27": "notaccept",
    "7.28": "spamdetected", "7.29": "authfailure", "7.30": "authfailure",
}

#: Codes that name the recipient specifically but are often used as catch-alls by servers
#: (5.1.1 for every refusal, 5.7.1 for every policy).  Text evidence may override them.
VAGUE_STATUS = frozenset({"7.1", "1.0", "0.0", "3.0", "4.0", "5.0", "7.0", "2.0", "2.1", "1.10",
                          "4.4", "7.9", "4.1", "2.4", "1.1"})

#: (reason, pattern) of real MTA wording, most specific first: the first match wins.
#: Sender-side wording comes before mailbox wording, so "550 5.1.1 ... blocked using
#: Spamhaus" is ``blocked``, never ``userunknown``.
_TEXT_TABLE: tuple[tuple[str, str], ...] = (
    ("virusdetected", (r"\bvirus\b.{0,40}(detected|found|infected)|infected with|contains? (a )?virus|"
                      r"message contain(s|ed)? (a |an )?(virus|malware)|\bmalware\b")),
    ("notcompliantrfc", (r"\b(not |non[- ]?)(rfc|compliant)\b|\brfc ?(5322|2822|5321)\b|"
                        r"duplicate (header|message-id|from|subject|date)|multiple (addresses in )?(from|subject|date|to)\b:? "
                        r"headers?|bare (lf|cr|line ?feed)|header (is )?(malformed|invalid|missing)|"
                        r"missing (required )?(header|from|date|message-id)|line (too long|length exceeded)|"
                        r"message (is )?not (rfc|standard)|invalid (message-id|header)")),
    ("authfailure", (r"\bspf\b.{0,40}(fail|check|validation|hardfail|softfail|policy)|"
                    r"(fail|not pass)\w*.{0,30}\bspf\b|\bdmarc\b.{0,40}(fail|reject|policy)|"
                    r"\bdkim\b.{0,30}(fail|invalid|signature (is )?(invalid|not valid|did not verify))|sender policy framework|"
                    r"bad spf records?|(not|n't|fails? to) pass (the )?authentication checks|"
                    r"does not have authentication information|"
                    r"not authorized to send (mail )?on behalf|spf: \S+ is not allowed|"
                    r"authentication (check )?fail\w* .{0,20}(sender|domain)|"
                    r"5\.7\.(2[0-46-9]|30)\b|unauthenticated email")),
    ("requireptr", (r"unverif(y|i)able sending ips?|invalid rdns|domain \S{1,255} mismatches client ip|reverse (dns|lookup|hostname)|\bptr\b.{0,30}(record|lookup|fail|missing|does not)|"
                   r"no ptr|(cannot|can't|could not|unable to) (find|resolve) (your|the) "
                   r"(host ?name|ptr|reverse)|ip name (possibly )?forged|"
                   r"not have (a )?(valid )?(reverse|ptr)|(dns|rdns) (does not|doesn't) match|"
                   r"client host (rejected: )?cannot find your hostname|5\.7\.25\b|"
                   r"(reverse|rdns|ptr) (name|record)s? (is |are )?(not|missing)|unresolvable (ip|address)|"
                   r"ip name lookup failed|no rdns|hostname (is )?(required|needed)|"
                   r"your (ip|host) has no (hostname|name|ptr)|sender ip must resolve|"
                   r"(ptr|reverse) (check|verification) fail")),
    ("badreputation", r"\[TSS0[49]\]|deferred due to (unexpected volume|user complaints)|reputation|senderscore|sender score|\bbad (sender|ip)\b|poor sending"),
    ("policyviolation", r"blocked because (its|the) content|content presents a potential"),
    ("norelaying", (r"insecure mail relay|email address is not verified\. the following identities failed|relay(ing)? (access |)(denied|not (allowed|permitted)|prohibited)|"
                   r"(unable|not allowed|not permitted|we do not) (to )?relay|not configured to relay|no relaying|"
                   r"not (a )?(local|gateway) (host|domain)|is not a valid (recipient|local) domain|"
                   r"relay (not allowed|denied)|\bnot relay|relaying (is )?denied|open relay")),
    ("blocked", (r"black ?list|block ?list|\bblocked (using|by|at|because (your|the) ip)|"
                r"\b(rbl|dnsbl|dnsrbl|spamhaus|spamcop|sorbs|barracuda ?(central|reputation)|uceprotect|"
                r"cbl\.abuseat|mailspike|psbl)\b|"
                r"\b(ip|client host|your host|sending host|your server|network|connection|your ip address|"
                r"client|remote host) (\[?\S{0,45}\]? )?(is |was |has been |)(blocked|banned|listed|blacklisted)|"
                r"smtp server of your isp|use (your|the) (isp|provider)'?s? (smtp|mail) ?server|"
                r"(your|the) (ip|host|network) (address )?(\S{0,45} )?(is |has been )?"
                r"(black|block|listed|banned|not (allowed|permitted))|(?<!not )\blisted (at|on|in|by)\b|"
                r"connections? (not accepted|refused|rejected|blocked) from|not accepting connections|service refused|service not available, closing|"
                r"client host \S* ?(rejected|blocked)|\b(dynamic|dial-?up|residential) (ip|address|pool|range|host|user)|"
                r"not allowed to send (mail|email)? ?from (your|this) (ip|host|network)|"
                r"rejected by .{0,40}(dnsbl|rbl)|has been temporarily blocked|temporarily deferred due to|"
                r"\b(mail|message)s? from \[?[\d.:a-f]{7,45}\]? (weren't|were not|refused|rejected|blocked|"
                r"temporarily deferred)|refused to talk to me|"
                r"sending (mta|host|ip|server)'?s? .{0,30}(poor|blocked|listed|rejected)|\bblacklisted\b|"
                r"\b5\.7\.606\b|\b5\.7\.511\b|\bbanned sender|refused by antispam|\bdenied by policy\b|"
                r"\(BL\)|(?<!recipient address rejected: )(?<!relay )access denied|too many (bad|invalid) recipients|please use the smtp|not allowed to send from")),
    ("spamdetected", (r"\bspam\b|\bjunk (mail|e-?mail)|bulk (mail|e-?mail)|unsolicited|"
                     r"\bspamassassin|content (filter|rejected|blocked)|"
                     r"message (looks|considered|classified|identified|detected|determined|rejected) "
                     r"(as |like |to be )?(spam|junk|suspicious)|"
                     r"(scored|score) (too high|of \d)|suspicious (mail|message|content)|"
                     r"filtered as spam|phish|"
                     r"(message|mail) (was |is )?(rejected|refused|blocked) (by|as) (our|the) (spam|content) ")),
    ("failedstarttls", (r"starttls.{0,30}(fail|error|required|not (available|supported|offered))|"
                       r"(not|n't) (support|advertise) (the )?(starttls|tls)|\btls\b.{0,30}(required|fail|must|negotiat|handshake)|"
                       r"must issue a starttls|encryption (is )?required|5\.7\.10\b|ssl (error|required)")),
    ("toomanyconn", (r"too many (connections|simultaneous|concurrent|sessions|smtp sessions)|"
                    r"connection (limit|rate limit) exceeded")),
    ("speeding", (r"receiving mail at a rate|please try again slower|slow down|(sending )?too fast|sending too much|"
                 r"try again (later|slower)"
                 r".{0,20}(rate|too many)|throttl")),
    ("ratelimited", (r"rate (limit|limited|exceeded)|(message|sending|email) limit (exceeded|reached)|"
                    r"exceeded .{0,30}(limit|quota) .{0,30}(sending|messages? per)|daily (limit|quota)|"
                    r"too many (messages|mails|recipients)\b")),
    ("exceedlimit", (r"exceeds? (the )?(recipient|user|mailbox)'?s? (size )?limit|limit set by (the )?recipient|"
                    r"too large for this recipient|recipsizelimit|"
                    r"message (size )?exceeds (the )?(recipient|user)|5\.2\.3\b")),
    ("mesgtoobig", (r"message (size|length) (exceeds|too (large|big)|is too (large|big)|limit)|"
                   r"(mail|message|email) (is )?too (large|big|long)|size limit|exceeds (the )?"
                   r"(fixed )?(maximum|max|size)|too big|(maximum|max) (message )?size|"
                   r"5\.3\.4\b|size exceeds|line limit exceeded")),
    ("contenterror", (r"content (type|encoding|transfer) (error|invalid|not (allowed|supported))|"
                     r"(improper|invalid|illegal|unsupported) (content|character|encoding|charset|attachment)|"
                     r"(attachment|file type|extension)s? .{0,30}(not allowed|prohibited|forbidden|blocked|rejected)|"
                     r"\bbanned (attachment|file|content)|message content (is )?(not|rejected)|"
                     r"\b8-?bit (data|mime|content)")),
    ("securityerror", (r"authentication (is )?(required|needed)|(must|need to) (be )?authenticat|"
                      r"authenticate (first|before)|"
                      r"(invalid|incorrect|bad) (credentials|password|login)|\bsmtp auth\b|"
                      r"not (authorized|authorised|permitted) to send|"
                      r"user not authorized to send|unauthenticated senders? not allowed|encryption needed")),
    ("rejected", (r"'send mail as'|purported responsible address|customfromdenied|permission to post|may not have permission|投稿する権限|"
                 r"sender (address |domain |)(rejected|refused|denied|invalid|verify failed|"
                 r"not (allowed|permitted|accepted|found)|does not exist|unknown)|"
                 r"(domain|address) of sender (address )?.{0,20}(does not exist|not (resolve|exist|found))|"
                 r"mail from.{0,30}(rejected|refused|denied|not (allowed|accepted))|"
                 r"(invalid|bad|unknown|unverifiable|illegal) (sender|mail from|return[- ]path|envelope sender)|"
                 r"sender (address )?(verification|verify) (failed|error)|"
                 r"(your|sender) domain .{0,20}(does not|doesn't|must) .{0,20}(exist|resolve|mx)|"
                 r"return path .{0,20}(invalid|rejected)|unroutable sender|"
                 r"sender is (blacklisted|blocked|rejected|not allowed)|"
                 r"(from|sender) address .{0,30}(rejected|refused|not allowed|invalid)|"
                 r"\bblacklisted by (the )?(recipient|user)|you are not allowed to send|"
                 r"senders? .{0,20}(are|is) not (permitted|allowed)|domain (is )?not (allowed|accepted)")),
    ("mailboxfull", (r"mail ?box (is |was |)(full|over ?quota|exceeded|out of (space|storage))|"
                    r"(over|exceed\w*) (its |his |her |the |their |)(storage |disk |mailbox |mail )?"
                    r"(quota|allocation|storage|limit)|quota (exceeded|full|violation)|"
                    r"(insufficient|not enough|no) (disk |mailbox |storage )?(space|room|storage)|"
                    r"mailbox (size|storage) (limit|quota)|(user|recipient|account|mail ?box|inbox) "
                    r"(is |was )?(full|overquota|over quota)|\bfull (mailbox|inbox)|mailfolder is full|"
                    r"exceeded storage|mailbox exceeds (the )?allowed size|(disk|mail|storage) quota|over the (storage|allowed) (limit|quota)|"
                    r"\bquota\b|5\.2\.2\b|mailbox (has )?exceeded|exceeds? (his|her|its|the) (mailbox|storage)")),
    ("suspend", (r"(account|mailbox|user|address|recipient)( has been| is| was)? "
                r"(suspended|disabled|deactivated|inactive|locked|blocked|frozen|expired|on hold|"
                r"temporarily (disabled|unavailable|suspended)|temporar(y|ily) locked)|\btemporar(y|ily) locked\b|"
                r"(suspended|disabled|inactive|deactivated|expired|locked) (account|mailbox|user)|"
                r"account (has been )?(terminated|closed|cancel)|"
                r"(user|recipient|mailbox) (is )?not (active|activated)|temporarily (disabled|suspended|locked)|"
                r"extended inactivity|\bdisabled\b.{0,20}(account|mailbox|recipient|user)|"
                r"\binactive (user|account|mailbox|recipient)|account (is )?unavailable|"
                r"service (is )?(suspended|disabled)|mailbox (has )?(been )?disabled|"
                r"\b(account|mailbox)\b.{0,40}\b(is|has been) (disabled|suspended|deactivated|inactive)")),
    ("userunknown", (r"(user|recipient|mailbox|address|account|addressee|alias|local part|local user)"
                    r"( name| address)? (is |was )?(unknown|not found|not exist|does not exist|doesn't exist|"
                    r"invalid|not valid|unavailable|not (known|listed|recognized|recognised)|no such|"
                    r"rejected|not (here|local))|"
                    r"(unknown|invalid|non-?existent|no such|not a valid|unrecognized|bad|unverified) "
                    r"(user|recipient|mailbox|address|account|addressee|local part|local user|e-?mail address|"
                    r"destination (mailbox|address))|"
                    r"no (such|valid) (user|recipient|mailbox|address|account|person|one)|"
                    r"(user|mailbox|recipient|address|account) (does|did) not (exist|resolve)|"
                    r"(user|mailbox|recipient|address|account) (doesn't|dosn't) exist|"
                    r"no mailbox (here|for|by that name)|(mailbox|address|user|recipient) "
                    r"(is )?(unknown|invalid|unavailable|not found|disabled permanently)|"
                    r"address (rejected|refused|invalid|unknown)|not listed in|"
                    r"(not|isn't) a known user|has no (mailbox|account)|"
                    r"sorry, no mailbox|unknown or illegal alias|"
                    r"(mailbox|user|recipient) (name )?not (allowed|valid)|(no|not a) (such |)local "
                    r"(user|mailbox|recipient)|\bno such\b|unknown local[- ]part|"
                    r"recipient (address )?(rejected|refused|not found|unknown|invalid)|"
                    r"(email|e-mail) (account|address) (that you tried to reach )?does not exist|"
                                        r"doesn't have a .{0,20} account|(user|address) lookup (failed|error)|"
                    r"in (virtual|local) (alias|mailbox|recipient) table|"
                    r"(invalid|unknown|undeliverable) (e-?mail )?address|"
                    r"\b5\.1\.[13]\b|\b5\.5\.0\b.{0,40}(user|mailbox|recipient)|"
                    r"dd this user doesn't have|recipient address rejected: access denied|not our customer|(user|mailbox) (has )?expired")),
    ("hasmoved", (r"(has|have) moved|moved (permanently|to)|no longer (available|valid|used)|"
                 r"address (has )?(been )?changed|new (e-?mail )?address|\b5\.1\.6\b")),
    ("filtered", (r"(recipient|user)'?s? (filter|rules)|rejected by (the )?(recipient|user)|"
                 r"refuses? to (accept|receive)|not accepting (any |your )?(mail|email|messages)|"
                 r"(recipient|user) (is )?not accepting|blocked by (the )?(recipient|user)|"
                 r"(message|mail|e-?mail) (was )?filtered|does not (accept|receive) (mail|e-?mail|messages) from|"
                 r"not (accept|receive) (mail|e-?mail|messages) from (you|this sender)|"
                 r"\bfiltered\b|restricted (sms|e-?mail)|due to user rules")),
    ("expired", (r"not going to try again|did not accept our requests to connect|retry timeout exceeded|"
                r"delivery failed \d+ attempts|(un)?able to deliver .{0,40}after multiple retries|"
                r"(delivery|retry) (time|period|timeout) (has )?(expired|exceeded)|"
                r"(message|mail) (has been |was )?(in the queue|queued|delayed|undeliver\w+) (too long|for (\d+|more))|"
                r"(could not be|couldn't be|not been|wasn't|hasn't been) delivered (for|within|in) \d|"
                r"giving up|gave up|retry (limit|timeout)|time(d)? out .{0,20}(queue|delivery)|"
                r"too long in (the )?queue|lifetime exceeded|message expired|expired after|"
                r"unable to deliver .{0,30}(after|for) \d+ (days|hours)|have not been able to deliver|"
                r"(has|have) not yet been delivered|will be returned to you after|delivery time expired|"
                r"no route .{0,20}delivery attempt|deferred for \d+ days|5\.4\.7\b|4\.4\.7\b")),
    ("notaccept", (r"no mx (record )?(found|for)|(couldn't|could not|cannot|can't|unable to) find a mail exchanger|"
                  r"(doesn't|does not) receive (e-?mail|mail)|does not accept (any )?(mail|e-?mail)|accepts? no mail|null mx|"
                  r"(host|domain|server) (does not|doesn't|will not|won't) (accept|receive) mail|"
                  r"not accept(ing)? (mail|e-?mail)|no mail (service|accepted)")),
    ("networkerror", (r"\bdns error\b|(mail|routing) loop|loops? back to (myself|me)|too many hops|hop count exceeded|"
                     r"(unable|could not|couldn't|failed) to (connect|route)|connection (timed? out|refused|reset|"
                     r"lost|closed|dropped)|(network|host) (is )?(unreachable|not reachable|down)|no route to host|"
                     r"malformed (or unexpected )?name server reply|(host ?name|dns) lookup failure|dns (lookup|query) (failed|error|timeout)|"
                     r"temporary (dns|lookup) failure|(lookup|dns) (timed out|timeout)|timeout|timed out|"
                     r"no answer from (host|server)|unable to (look|find) up|route (to|for) .{0,30}(failed|not)")),
    ("hostunknown", (r"host (or domain name )?(not found|unknown)|unknown (host|domain)|"
                    r"(domain|host) ?(name )?(not found|does not exist|doesn't exist|unknown|"
                    r"not (resolve|exist)|invalid|lookup failed)|no (mx|mail exchanger|such (domain|host))|"
                    r"(unrouteable|unroutable) (address|domain|mail domain)|name or service not known|"
                    r"nxdomain|(domain|host) name (is )?(not (valid|known)|invalid)|"
                    r"recipient domain .{0,20}(does not exist|not found|invalid)|"
                    r"unknown mail ?domain|dns (error|failure).{0,40}(domain|mx|host)|"
                    r"all relevant mx records point to non-existent hosts|"
                    r"(cannot|can't|could not|couldn't|unable to) (find|resolve|locate) (the )?"
                    r"(domain|host|mail ?server|mx|mx record)|\bbad destination (host|mailbox address)|"
                    r"domain (is )?(not|no longer) (in use|registered|exist)|5\.1\.2\b|"
                    r"(?<![\w@.-])(?:[a-z0-9-]+\.)+[a-z]{2,24} does not exist|domain is not reachable")),
    ("systemfull", (r"(system|disk|server|queue|filesystem|file system) (is )?(full|out of space)|"
                   r"insufficient system (storage|resources)|out of (storage|memory|disk)|"
                   r"(mail )?system (is )?(full|busy)|try again later, closing connection|"
                   r"too much mail data")),
    ("mailererror", (r"(mailer|program|pipe|procmail|delivery program|command) .{0,40}"
                    r"(error|failed|exit|returned)|unknown mailer|exit (code|status) \d+|"
                    r"x-unix; |command died|mailer (error|failure)|local delivery failed")),
    ("systemerror", (r"(system|server|configuration|internal|local|temporary) (error|failure|problem)|"
                    r"(service|server|system) (is )?(currently |temporarily )?(not available|unavailable|temporarily unavailable|"
                    r"shutting down)|try again later|resources temporarily unavailable|"
                    r"local error in processing|requested action aborted|transaction failed|queue file write error|"
                    r"mail server (is )?(temporarily )?(rejecting|unavailable)")),
    ("syntaxerror", (r"syntax error|malformed address:|command (not recognized|unrecognized)|bad sequence of commands|"
                    r"unrecognized command|command not implemented|parameter not implemented")),
    ("policyviolation", (r"blocked because (its|the) content|content presents a potential|"
                        r"\bpolicy\b.{0,50}(reject|violat|refus|denied|not)|"
                        r"(reject|violat|refus|denied|block)\w*.{0,40}\bpolicy\b|\bpolicy (reason|restriction)|\bheader error\b|"
                        r"local policy|acceptable use|\baup\b|\bterms of service\b|"
                        r"(message|mail|email) (is )?not (accepted|allowed) (by|for|because|due)|"
                        r"\bprohibited\b|not (accepted|permitted) by (the )?(recipient|administrator)|"
                        r"(email|mail) (is )?(rejected|refused) by (the )?(recipient|administrator|domain)")),
)

#: Wording that servers give only in reply to RCPT TO (the address itself was refused, before
#: any content was seen): "user unknown" with it stays ``userunknown``; without it (and without
#: an x.1.x code) a "user unknown" after the content was seen is a recipient-side ``filtered``.
RCPT_TIME_WORDING = re.compile(
    r"recipient address rejected|recipient name is not recognized|no valid recipients|"
    r"doesn't have an? \S+ account|recipient not found by smtp address lookup|"
    r"requested action not taken: mailbox unavailable|unknown recipient or mailbox unavailable|"
    r"address rejected\.|recipient address rejected: access denied|in reply to rcpt|"
    r"not listed in (the )?public name (&|and) address book|rcpt to:?\s*<", re.IGNORECASE)

#: Generic mailbox wording that a more specific sender-side wording in the same reply
#: overrides ("Recipient address rejected: Policy violation"); ``exceedlimit`` (the
#: recipient's own size limit) is specific and keeps its place.
YIELDS_TO_SENDER_SIDE = frozenset({"userunknown", "filtered", "suspend", "mailboxfull", "hasmoved",
                                   "notaccept", "hostunknown", "systemerror", "systemfull",
                                   "networkerror", "expired", "mailererror"})

#: Complaints that arrive without an ARF part: (where: "message" | "original", header,
#: value pattern, feedback type, recipient: "from" (the complainer wrote) | "value").
COMPLAINT_HEADERS: tuple[tuple[str, str, str, str, str], ...] = (
    ("message", "X-Apple-Unsubscribe", r"true|yes|1", "opt-out", "from"),  # Apple Mail's unsubscribe
    ("original", "X-HmXmrOriginalRecipient", r".{1,320}", "abuse", "value"),  # Microsoft JMRP
)

#: A plain-text bounce's own list of failed addresses (Exim: "The following address(es)
#: failed:" then indented addresses), read even when the address is also the bounce's To.
FAILED_LIST = re.compile(r"following address\(?e?s?\)?\s+failed:?[ \t]*\n\s*((?:[ \t]*[^\s@]+@\S+[ \t]*\n){1,50})",
                         re.IGNORECASE)

#: qmail's failed recipient, alone on its line after "I wasn't able to deliver your message"
#: ("<user@example.org>:"), read even when the address is also the bounce's To.
QMAIL_RECIPIENT = re.compile(r"^<([^\s<>@]{1,64}@[^\s<>@]{1,255})>:[ \t]*$", re.MULTILINE)

#: Lines an MTA adds after quoting the remote reply, which say nothing of their own: Sendmail
#: ends its transcript with "554 5.0.0 Service unavailable" whatever the remote host said.
MTA_SUMMARY_LINE = re.compile(r"^[ \t]*5\d\d 5\.0\.0 Service unavailable[ \t]*$", re.IGNORECASE | re.MULTILINE)

#: Plain-text bounces whose sender says what they mean in any language: a Google Groups
#: bounce (the group does not exist or we may not post to it) is our sender ``rejected``.
PROVIDER_SIGNATURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"https://groups\.google\.com/support/?", re.IGNORECASE), "rejected"),
)

#: Orange and La Poste (smtp-in.orange.fr, laposte.net) end every refusal with a numbered code
#: ("OFR_506", "LPN007_416", "OFR004_201"), documented by Orange's postmaster pages; its last
#: three digits name the cause more precisely than the words (which are often only "Mail
#: rejected" or "please try later").  Codes that only say "try later" are absent.
ORANGE_CODE = re.compile(r"\b(?:LPN|OFR|OUK)(?:_\d{3}|\d{3}[-_]\d{3})\b", re.IGNORECASE)
ORANGE_REASONS: dict[str, str] = {
    "102": "blocked",        # source IP blocked for spamming
    "103": "blocked",        # service refused (our host)
    "104": "toomanyconn",    # too many connections, slow down
    "305": "securityerror",  # invalid authentication code
    "401": "authfailure",    # SPF: not allowed to send mail
    "402": "securityerror",  # authentication required
    "403": "rejected", "405": "rejected", "415": "rejected",  # invalid sender
    "416": "userunknown", "418": "userunknown",  # invalid recipient
    "417": "mailboxfull",    # recipient over quota
    "420": "suspend",        # archived recipient
    "421": "rejected",       # MAIL FROM not owned by the user
    "426": "suspend",        # the recipient's account is blocked
    "505": "systemerror",    # service refused, try later (their side)
    "506": "spamdetected",   # mail rejected as spam
    "510": "blocked",        # our host refused
    "514": "mesgtoobig",     # message size limit reached
    "999": "blocked",        # service refused (our host)
}


def orange_reason(text: str) -> tuple[str, str] | None:
    """(reason, code) of an Orange / La Poste refusal code in ``text``, or None."""
    m = ORANGE_CODE.search(text)
    if not m:
        return None
    reason = ORANGE_REASONS.get(m.group(0)[-3:])
    return (reason, m.group(0)) if reason else None


#: Remote hosts whose wording means something else than it says: (host pattern, wording,
#: SMTP stage, reason).  NTT docomo answers "550 Unknown user" after DATA when the recipient's
#: own settings refuse our sender domain: the mailbox exists, our sender was refused.
RHOST_RULES: tuple[tuple[re.Pattern[str], re.Pattern[str], str, str], ...] = (
    (re.compile(r"\bdocomo\.ne\.jp\b", re.IGNORECASE), re.compile(r"\bunknown user\b", re.IGNORECASE),
     "data", "rejected"),
)

#: A network fault named next to an expiry ("Message expired, DNS query failed").
NETWORK_CAUSE = re.compile(r"dns (lookup|query) (failed|error|timeout)|no route to host|network (is )?unreachable",
                           re.IGNORECASE)

TEXT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE | re.DOTALL)) for reason, pattern in _TEXT_TABLE)


#: A generic refusal prefix whose own words come after the colon: "Recipient address rejected:
#: Mailer error" says ``mailererror``; the prefix alone says only that the address was refused.
_GENERIC_PREFIX = re.compile(r"recipient address rejected:\s*", re.IGNORECASE)


def match_text(text: str) -> tuple[str, str] | None:
    """(reason, matched wording) of the first pattern that matches ``text``, or None.

    Sender-side wording anywhere in ``text`` wins over mailbox wording ("Recipient address
    rejected: Policy violation" is ``policyviolation``, not ``userunknown``), and the words
    after a generic prefix ("Recipient address rejected: ...") win over the prefix.
    """
    m = _GENERIC_PREFIX.search(text)
    if m:
        hit = _match(text, m.end())  # patterns still see the prefix (look-behinds)
        if hit:
            return hit
    return _match(text, 0)


def _match(text: str, pos: int) -> tuple[str, str] | None:
    first = None
    for reason, pattern in TEXT_PATTERNS:
        if first is not None and reason not in SENDER_SIDE:
            continue
        m = pattern.search(text, pos)
        if m:
            if reason in SENDER_SIDE or first is None and reason not in YIELDS_TO_SENDER_SIDE:
                return reason, m.group(0)
            first = first or (reason, m.group(0))
    return first


def match_status(status: str) -> str | None:
    """The reason an enhanced status code ``c.s.d`` names, or None when it is too vague."""
    parts = status.split(".")
    if len(parts) != 3:
        return None
    key = parts[1] + "." + parts[2]
    if parts[0] == "2":
        return "delivered"
    return STATUS_REASONS.get(key)
