"""maillab's own ESMTP extension, which the server offers and the agent uses.

XMAILLAB-ONCE makes a retry safe. A client that lost the connection after sending a
message's final dot cannot know whether the message was stored (RFC 5321 section 6.1 lets
such a retry duplicate it). Sent as a MAIL parameter on the retry, it asks the server to
store the message only in the forward files that do not hold it already: the same
sender, the same recipients and the same bytes, among the most recent records.
"""

ONCE = "XMAILLAB-ONCE"
