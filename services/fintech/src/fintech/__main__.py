from fintech.service import service

service.main()
