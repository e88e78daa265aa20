"""Reply Error codes (IEC 61968-100 Reply/Error/code, "category.detail").

The standard's own table is not public; the categories follow its layout as far as public material
shows it (0 success, 1 envelope, 2 request content, 5 security, 6 execution). docs/mqtt-api.md lists
them for the MDM's integrators.
"""

OK = "0.0"  # done
PARTIAL = "0.1"  # done for some meters; Errors name the others
ACCEPTED = "0.3"  # journalled; the outcome follows with the same CorrelationID

MALFORMED = "1.1"  # not XML, a DTD or entities, too large, not a RequestMessage
UNSUPPORTED = "1.2"  # a verb and noun this HES does not serve
NO_MESSAGE_ID = "1.3"  # without a MessageID a request cannot be made idempotent
TOPIC_MISMATCH = "1.4"  # the topic's verb/noun differ from the Header's

UNKNOWN_METER = "2.4"
BAD_CONTENT = "2.5"  # an unknown control code, a missing meter list, a bad time range, ...
UNKNOWN_TARIFF = "2.6"  # UsagePointConfig names a tariff (PricingStructure) the box does not have
RATE_LIMITED = "2.9"  # too many relay operations for one meter

NOT_AUTHORIZED = "5.1"

EXPIRED = "6.1"
DEVICE_TIMEOUT = "6.2"
DEVICE_REFUSED = "6.3"  # the meter said no, or ended in another state than asked
NOT_SUPPORTED = "6.4"  # the meter (its model or protocol) cannot do this
FAILED = "6.9"  # anything else that went wrong while executing
